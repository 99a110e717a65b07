"""Reading the raw samples of WebDataset shards, local or remote, one shard after the other.

Written here rather than taken from `datasets`' webdataset builder, which stops the whole stream on one truncated tar
or bad member and cannot be caught from outside: a shard that breaks off yields one `truncated_shard` marker instead.
"""

import tarfile
from collections.abc import Iterator
from typing import Any

from datasets import DownloadConfig, Features, Value
from datasets.packaged_modules.webdataset.webdataset import base_plus_ext
from datasets.utils.file_utils import xopen

from .records import IMAGE_FIELD, RECORD_FIELD

TRUNCATED_SHARD = "truncated_shard"
RAW_FEATURES = Features(
    {
        "__key__": Value("string"),
        "__url__": Value("string"),
        IMAGE_FIELD: Value("binary"),
        RECORD_FIELD: Value("binary"),
        "error": Value("string"),
    }
)


def _empty_sample(key: str, url: str, error: str | None = None) -> dict[str, Any]:
    return {"__key__": key, "__url__": url, IMAGE_FIELD: None, RECORD_FIELD: None, "error": error}


def read_samples(shard_urls: list[str], token: str | bool | None) -> Iterator[dict[str, Any]]:
    """Yield the raw samples (`RAW_FEATURES`) of the shards in order, grouping tar members by key."""
    download_config = DownloadConfig(token=token)
    for url in shard_urls:
        sample: dict[str, Any] = {}
        try:
            with xopen(url, "rb", block_size=0, download_config=download_config) as file:
                with tarfile.open(fileobj=file, mode="r|") as tar:
                    for member in tar:
                        # The key is the member path up to the first dot of its file name, as `load_dataset` reads it.
                        key, field = base_plus_ext(member.name)
                        if not member.isfile() or key is None:
                            continue
                        if sample and sample["__key__"] != key:
                            yield sample
                            sample = {}
                        if not sample:
                            sample = _empty_sample(key, url)
                        if field in (IMAGE_FIELD, RECORD_FIELD):
                            sample[field] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError):
            yield _empty_sample("", url, TRUNCATED_SHARD)
            continue
        if sample:
            yield sample
