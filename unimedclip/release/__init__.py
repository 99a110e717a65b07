"""Releasing models and data: conversion of the original checkpoints, open_clip export, model and dataset cards
(and the cards of fine-tuned classifiers), and uploads to the Hub."""
