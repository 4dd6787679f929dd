"""Run the Dockerfile's install steps without a container engine, and measure what the image would hold.

    python deploy/check_image.py [--keep DIR]

Reads the Dockerfile, reproduces its build stage's COPY lines into a scratch directory (the same files, the
same layout), runs its ``RUN python -m venv … && … pip install …`` line there with this Python, then runs the
runtime stage's ENV and ``rag-sidecar config`` with the new venv (the image's entrypoint, offline). Prints
one JSON line: venv size, the corpus the image copies, and the pip command it ran. No engine is used, so the
base image's ~125 MB (python:3.11-slim) is not included: the total is an estimate, said as such.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE_MB = 125  # python:3.11-slim, uncompressed (docker image ls); not measured here


def du_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20, 1)


def stages(text: str) -> list[list[str]]:
    text = re.sub(r"\\\n\s*", " ", text)
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="build here and keep it (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    build, runtime = stages((ROOT / "Dockerfile").read_text())
    work = args.keep or Path(tempfile.mkdtemp(prefix="rag-image-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    pip_line = None
    for line in build:
        op, _, rest = line.partition(" ")
        if op == "COPY":
            parts = shlex.split(rest)
            *sources, dest = parts
            for s in sources:
                target = src / dest.removeprefix("./") if dest not in ("./", ".") else src / Path(s).name
                if (ROOT / s).is_dir():
                    shutil.copytree(ROOT / s, target if dest not in ("./", ".") else src / s, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(ROOT / s, src / Path(s).name if dest in ("./", ".") else target)
        elif op == "RUN" and "pip install" in rest:
            pip_line = rest
    if pip_line is None:
        raise SystemExit("no `RUN … pip install …` line in the Dockerfile's build stage")
    venv = work / "venv"
    command = pip_line.replace("/opt/venv", str(venv)).replace("python -m venv", f"{sys.executable} -m venv")
    t0 = time.perf_counter()
    res = subprocess.run(command, shell=True, cwd=src, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-3000:], file=sys.stderr)
        return 1
    install_s = round(time.perf_counter() - t0, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_SIDECAR")}
    for line in runtime:
        if line.startswith("ENV "):
            for k, v in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[k] = v.replace("/app/corpus", str(ROOT / "corpus")).replace("/data", str(work / "data"))
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    check = subprocess.run([str(venv / "bin" / "rag-sidecar"), "config"], env=env, capture_output=True, text=True,
                           cwd=work)
    print(json.dumps({"pip": command.replace(str(work), "$WORK"), "install_s": install_s,
                      "config_check": check.returncode == 0, "config_stderr": check.stderr.strip()[-300:],
                      "venv_mb": du_mb(venv), "corpus_mb": du_mb(ROOT / "corpus"),
                      "estimated_image_mb": round(BASE_IMAGE_MB + du_mb(venv) + du_mb(ROOT / "corpus")),
                      "python": sys.version.split()[0]}))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if check.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
