"""Data fixtures made at test time from the bundled task (runtime/gemma3_runtime/data/bundled/*.jsonl): the same
rows as chat `messages` in JSONL, Parquet, Arrow (save_to_disk) and a hub-style `datasets` cache."""

from __future__ import annotations

import json
from pathlib import Path

HUB_ID = "gemma3-launch-tests/wordcode-chat"


def bundled_chat_rows(split: str = "train", limit: int | None = None) -> list[dict]:
    """The bundled prompt/completion rows as two-turn chats."""
    from gemma3_runtime.data import synthetic
    from gemma3_runtime.data.sft import read_jsonl

    rows = read_jsonl(synthetic.bundled_path(split))[:limit]
    return [
        {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"]},
            ]
        }
        for row in rows
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def build_hub_cache(hf_home: Path, parquet: Path, repo_id: str = HUB_ID) -> Path:
    """What `datasets.load_dataset(repo_id)` leaves under HF_HOME/datasets after an online load of a Parquet hub
    dataset, so that with HF_HUB_OFFLINE=1 `load_dataset(repo_id)` finds it (datasets/load.py:
    CachedDatasetModuleFactory, datasets/packaged_modules/cache/cache.py): the Arrow files of datasets' own Parquet
    builder, prepared under the dataset's name, in `<owner>___<name>/<config>/<version>/<revision>/`.

    The builder prepares it in a scratch cache (given local files it names its config `default-<hash of the files>`);
    the prepared directory is then moved to the config and revision a hub load records."""
    import json
    import shutil

    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = repo_id.split("/")
    scratch = hf_home / "scratch"
    builder = Parquet(cache_dir=str(scratch), dataset_name=name, data_files={"train": [str(parquet)]})
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)
    info = json.loads((prepared / "dataset_info.json").read_text())
    version = info["version"]["version_str"]
    target = hf_home / "datasets" / f"{owner}___{name}" / info["config_name"] / version / ("0" * 40)
    target.parent.mkdir(parents=True)
    shutil.move(str(prepared), str(target))
    shutil.rmtree(scratch)
    return target
