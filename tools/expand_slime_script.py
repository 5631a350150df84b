"""Expand a slime launch script into the argument vector its trainer would get, without running anything.

    python tools/expand_slime_script.py SLIME_REPO scripts/run-qwen3-4B.sh [...] --out tests/data/slime_scripts

The script runs under bash from the slime checkout with `ray`, `python`/`python3`, `pkill`, `sleep`,
`nvidia-smi` and the like replaced by stubs on PATH: `ray job submit ... -- python3 train.py ARGS` (or a bare
`python3 train.py ARGS`) records ARGS instead of starting anything. Each script becomes one JSON file holding the
slime commit, the script's path, the entry point and the argument vector exactly as bash expanded it.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

ENTRY_POINTS = ("train.py", "train_async.py")
CONTAINER_ROOT = "/root/slime"
NUM_GPUS = 8  # what the scripts' GPU detection gets (their own default when nvidia-smi finds none)
# Environment a script expects its user to set stays a placeholder of its own name (WANDB_KEY=WANDB_KEY)

RECORDER = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "ray":
    if args[:2] != ["job", "submit"] or "--" not in args:
        sys.exit(0)
    args = args[args.index("--") + 1:]
    args = args[1:] if args and os.path.basename(args[0]).startswith("python") else args
entry = next((i for i, a in enumerate(args) if os.path.basename(a) in {ENTRY_POINTS!r}), None)
if entry is None:
    os.execv({sys.executable!r}, [{sys.executable!r}, *args])  # a helper the script runs itself
with open(os.environ["SLIME_ARGV_OUT"], "a") as f:
    f.write(json.dumps({{"entry": os.path.basename(args[entry]), "argv": args[entry + 1:]}}) + "\\n")
"""
SILENT = "#!/bin/sh\nexit 0\n"
# Scripts source their model's MODEL_ARGS from paths that hold only inside slime's container (/root/slime/...)
# or not at all (`scripts/low_precision/../scripts/models`): a model file is looked up in the checkout's
# scripts/models/ when the path given does not exist.
SOURCE_MODEL_ARGS = """source() {
  local f="$1"; shift
  if [ ! -f "$f" ] && [[ "$f" == */models/*.sh ]]; then f="$SLIME_ROOT/scripts/models/${f##*/}"; fi
  builtin source "$f" "$@"
}
builtin source "$0"
"""
GPU_LIST = "#!/bin/sh\n" + "".join(f'echo "GPU {i}: stub"\n' for i in range(NUM_GPUS))


def _stub_dir(root: Path) -> Path:
    stubs = {"ray": RECORDER, "python": RECORDER, "python3": RECORDER, "pkill": SILENT, "sleep": SILENT,
             "nvidia-smi": GPU_LIST, "pip": SILENT, "hf": SILENT, "huggingface-cli": SILENT}
    for name, text in stubs.items():
        path = root / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return root


def expand(slime: Path, script: str) -> dict:
    commit = subprocess.run(["git", "-C", str(slime), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        stubs = _stub_dir(Path(tmp))
        out = Path(tmp) / "argv.jsonl"
        env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", SLIME_ARGV_OUT=str(out),
                   NUM_GPUS=str(NUM_GPUS), WANDB_KEY="WANDB_KEY", SLIME_ROOT=str(slime.resolve()))
        run = subprocess.run(["bash", "-c", SOURCE_MODEL_ARGS, script], cwd=slime, env=env, capture_output=True, text=True, timeout=60)
        if not out.is_file():
            raise SystemExit(f"{script}: no trainer command recorded (bash exit {run.returncode}):\n{run.stderr[-2000:]}")
        launch = [json.loads(line) for line in out.read_text().splitlines()][-1]
    # paths into the checkout as the scripts expect them, in slime's container
    launch["argv"] = [a.replace(str(slime.resolve()), CONTAINER_ROOT) for a in launch["argv"]]
    return {"slime_commit": commit, "script": script, **launch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slime", type=Path, help="a checkout of slime")
    parser.add_argument("scripts", nargs="+", help="launch scripts, relative to the checkout")
    parser.add_argument("--out", type=Path, required=True, help="folder for one JSON file per script")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for script in args.scripts:
        record = expand(args.slime, script)
        target = args.out / (Path(script).stem + ".json")
        target.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{script}: {record['entry']}, {len(record['argv'])} arguments -> {target}")


if __name__ == "__main__":
    main()
