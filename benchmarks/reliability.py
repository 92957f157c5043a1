"""Rerun the reliability catalogue (``../shared/docs/reliability-cases.md``) against this checkout.

    sudo python benchmarks/reliability.py PROBE [--only M01,C28] [--slow]

Builds the fixtures in PROBE (a new folder; see ``reliability_fixtures.py``), runs every case's command with
this checkout's ``src`` (through ``PROBE/coinseg``, under ``nice``), and writes ``PROBE/results.jsonl``: per case
the exit status, the first stderr line (the last traceback line after ``Traceback``), whether the case's
``--out`` exists afterwards, the output of its check command, the seconds, and ``expected``: whether the outcome
is the one the case asks for (an ``error:`` line with the given words and exit 2 and nothing written, or exit 0).
The read-only and full-disk cases mount tmpfs folders (root needed) and unmount them afterwards. ``--slow``
adds M18a (100 000 rows, several minutes of CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
T = "--device cpu --config tiny.yaml"


@dataclass
class Case:
    """``want``: ``"error:WORDS"`` (exit 2, one ``error:`` line containing WORDS, ``out`` not created), ``"usage"``
    (exit 2 from the option parser), ``"ok"`` (exit 0), or ``"any"`` (judged from ``check``)."""

    id: str
    cmd: str
    want: str
    out: str = ""
    pre: str = ""
    check: str = ""
    slow: bool = False
    timeout: int = 600
    extra: dict = field(default_factory=dict)


def cases() -> list[Case]:
    c: list[Case] = []

    def add(id_: str, cmd: str, want: str, out: str = "", **kw: object) -> None:
        c.append(Case(id_, cmd, want, out, **kw))  # type: ignore[arg-type]

    # Manifests
    tc = "coinseg train-classifier"
    for id_, csv_, want in [
        ("M01", "m/nope.csv", "error:manifest not found"),
        ("M02", "m/empty.csv", "error:missing required column 'image'"),
        ("M03", "m/header_only.csv", "error:no data rows"),
        ("M04", "m/nolabel.csv", "error:missing required column 'label'"),
        ("M05", "m/label2.csv", "error:label '2' is not 0 or 1"),
        ("M06", "m/labelyes.csv", "error:label 'yes'"),
        ("M07", "m/labelnan.csv", "error:label 'NaN'"),
        ("M08", "m/split_bogus.csv", "error:unknown split 'training'"),
        ("M08b", "m/split_upper.csv", "error:unknown split 'Train'"),
        ("M10", "m/oneclass.csv", "error:has only label 0"),
        ("M11", "m/unicode.csv", "ok"),
        ("M12", "m/abspath.csv", "ok"),
        ("M13", "m/dir_as_image.csv", "error:a folder"),
        ("M13b", "m/dir_as_mask.csv", "error:is a folder, expected a file"),
        ("M14", "fx/img/grey8.png", "error:cannot read the manifest as CSV"),
        ("M14b", "m/png_as.csv", "error:cannot read the manifest as CSV"),
        ("M15", "m/bom.csv", "ok"),
        ("M16", "m/crlf.csv", "ok"),
        ("M17", "m/semicolon.csv", "error:missing required column 'image'"),
        ("M19", "m", "error:is a folder, expected a CSV file"),
        ("M20", "m/latin1.csv", "error:cannot read the manifest as CSV"),
    ]:
        add(id_, f"{tc} {csv_} --out runs/{id_} {T}", want, f"runs/{id_}")
    add("M09", f"{tc} m/dups.csv --out runs/M09 {T}", "ok", check="grep -h 'warning' runs/M09/log.txt")
    add("M09s", f"{tc} m/dups.csv --out runs/M09s {T} --strict-manifest", "error:(--strict-manifest)", "runs/M09s")
    add(
        "M18a",
        f"/usr/bin/time -f '%e s %M kB' {tc} m/big100k.csv --out runs/B01 {T}",
        "ok",
        check="grep -h 'warning\\|train /' runs/B01/log.txt",
        slow=True,
    )
    add("M18as", f"{tc} m/big100k.csv --out runs/B01s {T} --strict-manifest", "error:(--strict-manifest)", "runs/B01s")
    add(
        "M18b",
        "/usr/bin/time -f '%e s %M kB' coinseg segment runs/gan m/big100k.csv --split all --out o/B02 --device cpu",
        "error:both map to the mask name",
        "o/B02",
    )
    # Images
    for id_, csv_, want in [
        ("I01", "img_trunc_npy", "error:unreadable image"),
        ("I02", "img_nan_npy", "error:NaN or infinite"),
        ("I02b", "img_inf_npy", "error:NaN or infinite"),
        ("I03", "img_vol3d_npy", "error:a .npy is one 2-D slice"),
        ("I04", "img_one_npy", "error:expected a 2-D slice or a 3-D volume"),
        ("I05", "img_boolimg_npy", "error:not a real-valued numeric array"),
        ("I06", "img_obj_npy", "error:unreadable image"),
        ("I07", "img_empty_npy", "error:unreadable image"),
        ("I08", "img_text_png", "error:unreadable image"),
        ("I09", "img_corrupt_dcm", "error:unreadable image"),
        ("I10", "img_nopixel_dcm", "error:unreadable image"),
        ("I10b", "img_garbage_dcm", "error:unreadable image"),
        ("I11", "img_vol4d_nii_gz", "error:expected a 2-D or 3-D NIfTI image"),
        ("I12", "mixed", "error:mixes grey-value images with HU images"),
        ("I13", "png_la", "error:mixes grey-value images with HU images"),
    ]:
        add(id_, f"{tc} m/{csv_}.csv --out runs/{id_} {T}", want, f"runs/{id_}")
    py = "PYTHONPATH=" + shlex.quote(str(SRC)) + " python3 -c "
    read = "from coinseg.io.images import read_image as r; from pathlib import Path as P; import numpy as n; "
    add(
        "I15",
        py
        + shlex.quote(
            read + "print('max |palette_inv - grey8| =', float(n.abs(r(P('fx/img/palette_inv.png'))"
            ".array - r(P('fx/img/grey8.png')).array).max()))"
        ),
        "ok",
    )
    add(
        "I16",
        py
        + shlex.quote(
            read + "g = r(P('fx/img/grey8.png')).array; print('max diff to grey8:', "
            "{k: float(n.abs(r(P(f'fx/img/{k}.png')).array - g).max()) for k in ('grey16', 'rgb', 'rgba', 'palette', "
            "'la')})"
        ),
        "ok",
    )
    seg = "coinseg segment runs/gan"
    for id_, src, want in [
        ("I14", "fx/img/rgb_hw3.npy", "error:a .npy is one 2-D slice"),
        ("I17", "fx/img/vol3d.npy", "error:a .npy is one 2-D slice"),
        ("I18", "fx/img/oblique.nii.gz", "ok"),
        ("I19", "fx/img/swapped.nii.gz", "ok"),
        ("I20", "fx/img/vol4d.nii.gz", "error:expected a 2-D or 3-D NIfTI image"),
        ("I21", "fx/dcmseries", "ok"),
        ("I23", "fx/img/grey8.png", "error:grey-value images (PNG, TIFF) but the model was trained on HU"),
        ("I24", "fx/img", "error:boolimg.npy"),
    ]:
        add(id_, f"{seg} {src} --out o/{id_} --device cpu", want, f"o/{id_}")
    geometry = (
        "import nibabel as b, sys; i, o = b.load(sys.argv[1]), b.load(sys.argv[2]); "
        "print('shape', o.shape == i.shape, 'affine', bool((o.affine == i.affine).all()))"
    )
    for id_, src in (("I18", "fx/img/oblique.nii.gz"), ("I19", "fx/img/swapped.nii.gz")):
        name = Path(src).name.replace(".nii.gz", "")
        next(
            x for x in c if x.id == id_
        ).check = f"python3 -c {shlex.quote(geometry)} {src} o/{id_}/masks/{name}.nii.gz"
    add(
        "I22",
        f"/usr/bin/time -f '%e s %M kB' {seg} fx/img/big.npy --out o/I22 --device cpu",
        "ok",
    )
    add(
        "I25",
        "coinseg evaluate runs/gan m/mask_shape.csv --out o/E02 --device cpu",
        "error:mask shape (32, 32)",
        "o/E02",
    )
    add("I26", "coinseg evaluate runs/gan m/png_good.csv --out o/E11 --device cpu", "error:but the model was", "o/E11")
    # Command line, options, output folders, config
    one = "fx/img/good.dcm"
    for id_, cmd, want, out in [
        (
            "C01",
            f"{'coinseg segment runs/emptyrun'} {one} --out o/S01 --device cpu",
            "error:checkpoint not found",
            "o/S01",
        ),
        ("C02", f"coinseg segment runs/clf {one} --out o/S02 --device cpu", "error:not a COIN/GAN run", "o/S02"),
        (
            "C03",
            f"coinseg train m/good.csv --classifier runs/gan --out runs/S03 {T}",
            "error:not a classifier",
            "runs/S03",
        ),
        ("C04", f"{seg} {one} --out o/S04 --threshold -1", "error:--threshold -1", "o/S04"),
        ("C05", f"{seg} {one} --out o/S05 --threshold 2", "error:--threshold 2", "o/S05"),
        ("C06", f"{seg} {one} --out o/S06 --threshold abc", "error:--threshold 'abc'", "o/S06"),
        ("C07", f"{seg} m/good.csv --out o/S07 --split bogus", "error:no rows in split 'bogus'", "o/S07"),
        (
            "C08",
            "coinseg evaluate runs/gan m/good.csv --out o/E03 --split bogus",
            "error:unknown split 'bogus'",
            "o/E03",
        ),
        ("C09", f"{seg} {one} --out o/S08 --device cuda", "error:no CUDA device", "o/S08"),
        ("C10", f"{seg} {one} --out o/S09 --foo 3", "usage", "o/S09"),
        ("C11", f"{seg} {one} --out o/S09b --device gpu", "usage", "o/S09b"),
        ("C12", f"{tc} m/good.csv --out runs/S11 {T} --resume", "error:--resume given but there is no", "runs/S11"),
        ("C16", f"{tc} data/manifest.csv --out runs/F01 {T} --max-minutes -1", "error:--max-minutes -1", "runs/F01"),
        (
            "C17",
            f"coinseg train data/manifest.csv --classifier runs/clf --out runs/F02 {T} --max-steps 0",
            "error:--max-steps 0",
            "runs/F02",
        ),
        (
            "C18",
            f"coinseg train data/manifest.csv --classifier runs/clf --out runs/F02b {T} --max-steps -3",
            "error:--max-steps -3",
            "runs/F02b",
        ),
        ("C19", f"{seg} {one} --out o/S24 --batch-size 0", "error:--batch-size 0", "o/S24"),
        ("C20", f"{seg} {one} --out o/S24b --batch-size -1", "error:--batch-size -1", "o/S24b"),
        ("C21", f"{seg} {one} --out fx/img", "error:exists and is not empty", ""),
        ("C22", f"{seg} m/good.csv --out m", "error:exists and is not empty", ""),
        ("C23", f"{seg} {one} --out {one}", "error:", ""),
        ("C27", f"{tc} data/manifest.csv --out {one} {T}", "error:is a file", ""),
        ("C28", f"{seg} {one} --out ro/out --device cpu", "error:Read-only file system", "ro/out"),
        ("C29", f"{tc} data/manifest.csv --out ro/run {T}", "error:Read-only file system", "ro/run"),
        ("C30", "coinseg synth ro/syn --n-slices 20 --size 64", "error:Read-only file system", "ro/syn"),
    ]:
        add(id_, cmd, want, out)
    c[-1].extra["ro"] = True
    c[-2].extra["ro"] = True
    c[-3].extra["ro"] = True
    cfg = f"{tc} data/manifest.csv --out runs/CFG --device cpu --config"
    for id_, name, want in [
        ("C31", "unknown", "error:gan.lr_typo: unknown setting"),
        ("C32", "lr_str", "error:classifier.lr: 'abc' is not a (finite) number"),
        ("C33", "bs_str", "error:classifier.batch_size: '8' is not an integer"),
        ("C34", "bs0", "error:classifier.batch_size: 0 must be >= 1"),
        ("C35", "size10", "error:data.size: 10 must be a multiple of 16"),
        ("C37", "pyobj", "error:cannot read settings"),
        ("C38", "list", "error:settings: expected a mapping, got list"),
        ("C39", "sect_list", "error:classifier: expected a mapping, got list"),
        ("C40", "negsteps", "error:classifier.max_steps: -5 must be >= 1"),
        ("C41", "window_rev", "error:data.window: [300.0, 100.0] must be [lo, hi] with lo < hi"),
        ("C42", "broken", "error:cannot read settings"),
        ("C43", "pct_rev", "error:data.percentiles: [99.0, 1.0] must be"),
        ("C44", "nope", "error:cannot read settings"),
    ]:
        add(id_, cfg.replace("CFG", id_) + f" cfg/{name}.yaml", want, f"runs/{id_}")
    next(x for x in c if x.id == "C37").check = "ls PWNED 2>&1 | head -1"
    add(
        "C36",
        "coinseg train data/manifest.csv --classifier runs/clf --out runs/C06 --device cpu --config cfg/betas1.yaml",
        "error:gan.betas: [0.5] must be a list of 2 numbers",
        "runs/C06",
    )
    ev = "coinseg evaluate runs/gan m/good.csv"
    for id_, cmd, want, out in [
        ("C45", f"{ev} --out o/E04 --methods bogus", "error:unknown method 'bogus'", "o/E04"),
        ("C46", f"{ev} --out o/E05 --max-slices 1", "error:--max-slices 1", "o/E05"),
        ("C47", f"{ev} --out o/E12 --max-slices 0", "error:--max-slices 0", "o/E12"),
        ("C48", f"{ev} --out o/E06 --methods layercam --saliency-threshold 5", "error:--saliency-threshold 5", "o/E06"),
        ("C49", f"{ev} --out o/E07 --methods coin,singla", "error:--methods singla needs --singla-run", "o/E07"),
        ("C50", f"{ev} --out o/E10 --methods rise --rise-masks 0 --max-slices 4", "error:--rise-masks 0", "o/E10"),
        ("C51", "coinseg synth fx --n-slices 20 --size 64", "error:exists and is not empty", ""),
        ("C52", "coinseg synth o/SY2 --n-slices 5 --size 64", "error:--n-slices 5", "o/SY2"),
        ("C53", "coinseg synth o/SY3 --n-slices 20 --size 32", "error:--size 32", "o/SY3"),
        ("C54", "coinseg synth o/SY4 --n-slices 20 --size 100000", "error:--size 100000", "o/SY4"),
        ("C55", f"{tc} data/manifest.csv --out runs/P01 {T} --seed -1", "error:--seed -1", "runs/P01"),
        ("C56", f"{tc} data/manifest.csv --out runs/P02 {T} --seed 99999999999999999999", "error:--seed 9", "runs/P02"),
        ("C57", "coinseg synth o/P03 --n-slices 20 --size 64 --seed -1", "error:--seed -1", "o/P03"),
        ("C58", f"{seg} {one} --out o/P04 --threshold auto", "ok", ""),
        ("C59", f"{tc} data/manifest.csv --out runs/P05 {T} --precision bf16-mixed", "error:needs a CUDA", "runs/P05"),
        ("C60", f"coinseg segment runs/corrupt {one} --out o/K04 --device cpu", "error:unreadable checkpoint", "o/K04"),
    ]:
        add(id_, cmd, want, out)
    # ownership (item 1, on main): run to observe
    add(
        "C13",
        f"{tc} data/manifest.csv --out runs/clf_prof --resume --profile paper --device cpu",
        "error:--resume with other settings",
        pre="cp -r runs/clf runs/clf_prof && cp runs/clf_prof/config.yaml before13.yaml",
        check="cmp before13.yaml runs/clf_prof/config.yaml && echo config.yaml unchanged",
    )
    add(
        "C14",
        "coinseg train data/manifest.csv --classifier runs/clf --out runs/resA_cfg --config fast.yaml --max-steps 14 "
        "--resume --device cpu",
        "error:--resume with other settings",
        pre="cp -r runs/resA runs/resA_cfg && cp runs/resA_cfg/config.yaml before14.yaml",
        check="cmp before14.yaml runs/resA_cfg/config.yaml && echo config.yaml unchanged",
    )
    add(
        "C15",
        "coinseg train data/manifest.csv --classifier runs/clfA --out runs/gan_swap --config fast.yaml --max-steps 21 "
        "--resume --device cpu",
        "error:not the classifier this run was trained with",
        pre="cp -r runs/gan runs/gan_swap",
        check="cmp runs/gan_swap/checkpoints/classifier.pt runs/clf/checkpoints/best.pt && echo classifier.pt kept",
    )
    add(
        "C24",
        f"{ev} --out userdir",
        "error:exists and is not empty",
        pre="mkdir -p userdir && echo keep > userdir/notes.txt",
        check="ls userdir",
    )
    add(
        "C25",
        f"{tc} data/manifest.csv --out userdir2 {T}",
        "error:was not made by coinseg",
        pre="mkdir -p userdir2/samples && echo keep > userdir2/notes.txt && printf 'a,b\\n1,2\\n' > userdir2/metrics.csv"
        " && echo 'my: own' > userdir2/config.yaml && for f in log.txt run.json test_metrics.json progress.png; do "
        "echo mine > userdir2/$f; done && (cd userdir2 && sha256sum * > ../userdir2.sha)",
        check="cd userdir2 && sha256sum -c --quiet ../userdir2.sha && echo all user files unchanged; ls -A",
    )
    add(
        "C26",
        f"{tc} data2/manifest.csv --out data2 {T}",
        "error:is the folder of an input",
        check="ls data2",
    )
    add(
        "C61",
        "coinseg demo --out demo1 --device cpu",
        "error:",
        pre="coinseg synth demo1/data --n-slices 200 --size 64 >/dev/null 2>&1; mkdir -p demo1/report demo1/classifier "
        "demo1/coin demo1/singla && echo keep > demo1/report/precious.txt && for f in classifier/test_metrics.json "
        "coin/run.json singla/run.json; do echo '{}' > demo1/$f; done",
        check="cat demo1/report/precious.txt; ls demo1",
        timeout=120,
    )
    add(
        "C62",
        "coinseg demo --out demo2 --device cpu",
        "error:",
        pre="mkdir -p demo2/classifier && echo keep > demo2/classifier/precious.txt && coinseg synth demo2/data "
        "--n-slices 200 --size 64 >/dev/null 2>&1",
        check="cat demo2/classifier/precious.txt",
        timeout=120,
    )
    # Faults (F01-F08, F10-F12 are scripted in run_faults)
    add(
        "F09",
        f"coinseg segment runs/resK {one} --out o/K05 --device cpu",
        "any",
        check="python3 -c \"import json; print('run.json' , json.load(open('runs/resK/run.json')) if "
        "__import__('os').path.exists('runs/resK/run.json') else 'absent')\" | head -c 200",
    )
    # Security
    add(
        "X01",
        "coinseg segment runs/gan sec/imgs --out o/X01 --device cpu",
        "ok",
        check="ls o/X01/masks; ls PWNED2 2>&1",
    )
    add(
        "X02",
        "coinseg segment runs/gan sec/a/b/trav.csv --split all --out o/X02 --device cpu",
        "ok",
        check="ls o/X02/masks",
    )
    add("X03", f"{seg} {one} --out o/X03/../X03b --device cpu", "ok", check="ls -d o/X03b o/X03 2>&1")
    add(
        "X04",
        "coinseg evaluate runs/gan 'sec/<img src=x onerror=alert(1)>/man.csv' --out o/E08 --device cpu --max-slices 8",
        "ok",
        check="grep -c '<img src=x' o/E08/report.html; grep -c 'onerror' o/E08/report.html",
    )
    add(
        "X05",
        "coinseg segment runs/gan sec/csvinj/man.csv --out o/X04 --device cpu",
        "ok",
        check="cut -c1-40 o/X04/predictions.csv",
    )
    add("X06", "coinseg evaluate runs/gan m/good.csv --out o/E01 --device cpu", "ok", check="ls o/E01")
    return c


def in_process(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str] | None:
    """Run a plain ``coinseg ...`` command line through typer's test runner in this process (imports paid once:
    the machine is shared and slow); None for any other command line (pipes, redirections, env)."""
    if not cmd.startswith("coinseg ") or any(ch in cmd for ch in "|;&><$`"):
        return None
    from typer.testing import CliRunner

    from coinseg.cli import app

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, shlex.split(cmd)[1:], prog_name="coinseg")
    finally:
        os.chdir(previous)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        stderr += trace
    return subprocess.CompletedProcess(cmd, result.exit_code, result.stdout, stderr)


def sh(cmd: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{cwd}:{os.environ['PATH']}", COLUMNS="200")
    return subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def first_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("\r", "\x1b"))]
    if any(line.startswith("Traceback") for line in lines):
        return "Traceback ... " + lines[-1]
    skip = ("synth ", "loading slices", "segment ", "evaluate ", "classifier ", "coin GAN", "WARNING", "Using ")
    useful = [line for line in lines if not line.lstrip().startswith(skip) and "━" not in line]
    return (useful or lines or [""])[0][:300]


def judge(case: Case, code: int, stderr: str, out_exists: bool) -> bool:
    if case.want == "any":
        return True
    if case.want == "ok":
        return code == 0
    if case.want == "usage":
        return code == 2 and "Traceback" not in stderr
    words = case.want[len("error:") :]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return code == 2 and len(errors) == 1 and words in errors[0] and "Traceback" not in stderr and not out_exists


def mount(path: Path, megabytes: float, read_only: bool = False) -> None:
    path.mkdir(exist_ok=True)
    options = f"size={int(megabytes * 1024)}k" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False)


def prepare_runs(probe: Path) -> None:
    steps = [
        "coinseg train-classifier data/manifest.csv --out runs/clf --device cpu --config fast.yaml",
        "coinseg train data/manifest.csv --classifier runs/clf --out runs/gan --device cpu --config fast.yaml",
        "coinseg train-classifier data/manifest.csv --out runs/clfA --device cpu --config clfres.yaml",
        "coinseg train data/manifest.csv --classifier runs/clf --out runs/resA --config resume.yaml --device cpu",
        "mkdir -p runs/emptyrun",
        "cp -r runs/gan runs/corrupt && truncate -s 300K runs/corrupt/checkpoints/best.pt",
    ]
    for step in steps:
        result = sh(step, probe)
        if result.returncode != 0:
            raise SystemExit(f"fixture step failed: {step}\n{result.stderr[-2000:]}")


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def metrics_step(path: Path) -> int:
    try:
        rows = path.read_text().splitlines()[1:]
    except OSError:
        return -1
    return max((int(float(r.split(",")[0])) for r in rows if r), default=-1)


def compare_checkpoints(probe: Path, a: str, b: str) -> str:
    code = (
        "import torch, sys\n"
        "def flat(d, p=''):\n"
        "    out = {}\n"
        "    for k, v in (d.items() if isinstance(d, dict) else enumerate(d)):\n"
        "        if isinstance(v, (dict, list, tuple)): out.update(flat(v, f'{p}{k}.'))\n"
        "        else: out[f'{p}{k}'] = v\n"
        "    return out\n"
        "x = flat(torch.load(sys.argv[1], weights_only=True)); y = flat(torch.load(sys.argv[2], weights_only=True))\n"
        "diff = [k for k in x if k not in y or (torch.is_tensor(x[k]) and not torch.equal(x[k], y[k])) or "
        "(not torch.is_tensor(x[k]) and x[k] != y[k])]\n"
        "w = [float((x[k].float() - y[k].float()).abs().max()) for k in diff if torch.is_tensor(x[k]) and "
        "x[k].is_floating_point()]\n"
        "print(f'{len(x)} entries, {len(diff)} differ' + (f' (max |dW| {max(w, default=0):.3g}; {diff[:3]})' if "
        "diff else ''))\n"
    )
    return sh(f"python3 -c {shlex.quote(code)} {a} {b}", probe).stdout.strip()


def background(cmd: str, probe: Path, signal_: int, ready, delay: float = 0.0) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    env = dict(os.environ, PATH=f"{probe}:{os.environ['PATH']}", COLUMNS="200")
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + cmd], cwd=probe, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    reached = wait_for(lambda: ready() or proc.poll() is not None, 600)
    if reached and proc.poll() is None:
        time.sleep(delay)
        # the wrapper execs nice, which execs python: the pid is the python process
        os.kill(proc.pid, signal_)
    _, err = proc.communicate()
    return proc.returncode, err


def run_faults(probe: Path, only: set[str] | None = None) -> list[dict]:
    """F01-F12 as real processes (killed, interrupted, racing, on full disks); ``only``: a subset of ids."""
    results = []

    def want(id_: str) -> bool:
        return only is None or id_ in only

    def record(id_: str, cmd: str, codes: str, line: str, note: str, expected: bool) -> None:
        results.append({"id": id_, "cmd": cmd, "exit": codes, "first": line, "check": note, "expected": expected})
        print(id_, codes, line[:100], "|", note[:200], flush=True)

    gan = "coinseg train data/manifest.csv --classifier runs/clf --device cpu"
    if want("F01"):
        # F01: kill -9 a GAN run after step 6, resume to 12, compare with runs/resA
        cmd = f"{gan} --out runs/resB --config resume.yaml --max-steps 1000"
        code1, _ = background(
            cmd, probe, signal.SIGKILL, lambda: metrics_step(probe / "runs/resB/metrics.csv") >= 6, random.uniform(0, 4)
        )
        second = sh(f"{gan} --out runs/resB --config resume.yaml --max-steps 12 --resume", probe)
        resumed = [line for line in second.stdout.splitlines() + second.stderr.splitlines() if "resumed" in line]
        note = "last.pt: " + compare_checkpoints(
            probe, "runs/resA/checkpoints/last.pt", "runs/resB/checkpoints/last.pt"
        )
        note += "; best.pt: " + compare_checkpoints(
            probe, "runs/resA/checkpoints/best.pt", "runs/resB/checkpoints/best.pt"
        )
        metrics_a = [r.split(",")[:2] for r in (probe / "runs/resA/metrics.csv").read_text().splitlines()]
        metrics_b = [r.split(",")[:2] for r in (probe / "runs/resB/metrics.csv").read_text().splitlines()]
        note += f"; metrics.csv step column equal: {[m[0] for m in metrics_a] == [m[0] for m in metrics_b]}"
        record(
            "F01",
            cmd + " ; kill -9 after step 6 ; --max-steps 12 --resume",
            f"{code1}, {second.returncode}",
            (resumed or [first_line(second.stderr)])[0],
            note,
            second.returncode == 0 and "0 differ" in note,
        )
    if want("F02"):
        # F02: log every step, checkpoint every 4; kill after 6, resume to 8: each step once in metrics.csv
        cmd = f"{gan} --out runs/resC --config resume2.yaml --max-steps 1000"
        code1, _ = background(cmd, probe, signal.SIGKILL, lambda: metrics_step(probe / "runs/resC/metrics.csv") >= 6)
        second = sh(f"{gan} --out runs/resC --config resume2.yaml --max-steps 8 --resume", probe)
        steps = [r.split(",")[0] for r in (probe / "runs/resC/metrics.csv").read_text().splitlines()[1:]]
        note = f"metrics.csv steps {steps}"
        record(
            "F02",
            cmd + " ; kill -9 after step 6 ; --max-steps 8 --resume",
            f"{code1}, {second.returncode}",
            first_line(second.stderr),
            note,
            len(steps) == len(set(steps)),
        )
    if want("F03"):
        # F03: --max-minutes stop and resume, compared with an uninterrupted 60-step run
        first = sh(f"{gan} --out runs/resF --config resume.yaml --max-steps 60 --max-minutes 0.1", probe)
        second = sh(f"{gan} --out runs/resF --config resume.yaml --max-steps 60 --resume", probe)
        sh(f"{gan} --out runs/resE --config resume.yaml --max-steps 60", probe)
        note = "last.pt: " + compare_checkpoints(
            probe, "runs/resE/checkpoints/last.pt", "runs/resF/checkpoints/last.pt"
        )
        note += "; best.pt: " + compare_checkpoints(
            probe, "runs/resE/checkpoints/best.pt", "runs/resF/checkpoints/best.pt"
        )
        stop = [line for line in (first.stdout + first.stderr).splitlines() if "--max-minutes reached" in line]
        record(
            "F03",
            f"{gan} --out runs/resF --config resume.yaml --max-steps 60 --max-minutes 0.1 ; then --resume",
            f"{first.returncode}, {second.returncode}",
            (stop or [""])[0],
            note,
            "0 differ" in note,
        )
    if want("F04"):
        # F04: resume a finished run
        sh("cp -r runs/resA runs/resD", probe)
        before = (probe / "runs/resD/metrics.csv").read_text()
        result = sh(f"{gan} --out runs/resD --config resume.yaml --resume", probe)
        after = (probe / "runs/resD/metrics.csv").read_text()
        record(
            "F04",
            f"{gan} --out runs/resD --config resume.yaml --resume  (finished run)",
            str(result.returncode),
            first_line(result.stderr),
            f"metrics.csv unchanged: {before == after}; rows {len(before.splitlines()) - 1} -> "
            f"{len(after.splitlines()) - 1}",
            before == after,
        )
    if want("F05"):
        # F05: classifier kill at step 10, resume, compare with runs/clfA
        tc = "coinseg train-classifier data/manifest.csv --device cpu --config clfres.yaml"
        code1, _ = background(
            f"{tc} --out runs/clfB", probe, signal.SIGKILL, lambda: metrics_step(probe / "runs/clfB/metrics.csv") >= 10
        )
        second = sh(f"{tc} --out runs/clfB --resume", probe)
        note = "last.pt: " + compare_checkpoints(
            probe, "runs/clfA/checkpoints/last.pt", "runs/clfB/checkpoints/last.pt"
        )
        resumed = [line for line in (second.stdout + second.stderr).splitlines() if "resumed" in line]
        record(
            "F05",
            f"{tc} --out runs/clfB ; kill -9 after step 10 ; --resume",
            f"{code1}, {second.returncode}",
            (resumed or [first_line(second.stderr)])[0],
            note,
            "0 differ" in note,
        )

    if want("F06"):
        # F06: kill segment after 5 masks
        def masks_written() -> int:
            return sum(len(list(p.glob("masks/*.png"))) for p in (probe / "o").glob(".K01.tmp-*"))

        code1, _ = background(
            "coinseg segment runs/gan fx/bigdir --out o/K01 --device cpu",
            probe,
            signal.SIGKILL,
            lambda: masks_written() >= 5,
        )
        left = [p.name for p in (probe / "o").glob(".K01.tmp-*")]
        record(
            "F06",
            "coinseg segment runs/gan fx/bigdir --out o/K01 --device cpu ; kill -9 after 5 masks",
            str(code1),
            "",
            f"o/K01 exists: {(probe / 'o/K01').exists()}; leftover temporary folders: {left}",
            not (probe / "o/K01").exists(),
        )
    if want("F07"):
        # F07: SIGINT mid-run
        code1, err = background(
            "coinseg train-classifier data/manifest.csv --out runs/K02 --device cpu --config clflong.yaml",
            probe,
            signal.SIGINT,
            lambda: metrics_step(probe / "runs/K02/metrics.csv") >= 20,
            1.0,
        )
        step = sh(
            "python3 -c \"import torch; print(torch.load('runs/K02/checkpoints/last.pt', weights_only=True)['step'])\"",
            probe,
        ).stdout.strip()
        record(
            "F07",
            "coinseg train-classifier ... --config clflong.yaml ; SIGINT after step 20",
            str(code1),
            first_line(err),
            f"last.pt step {step}; traceback: {'Traceback' in err}",
            "Traceback" not in err,
        )
    if want("F08"):
        # F08: two concurrent runs into one folder
        k03 = "coinseg train-classifier data/manifest.csv --out runs/K03 --device cpu --config clfres.yaml"
        env = dict(os.environ, PATH=f"{probe}:{os.environ['PATH']}")
        a = subprocess.Popen(
            ["bash", "-c", f"{k03} --seed 1"],
            cwd=probe,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: (probe / "runs/K03/.coinseg.lock").exists(), 120)
        b = sh(f"{k03} --seed 2", probe)
        _, err_a = a.communicate()
        steps = [r.split(",")[0] for r in (probe / "runs/K03/metrics.csv").read_text().splitlines()[1:]]
        record(
            "F08",
            f"{k03} --seed 1 & {k03} --seed 2",
            f"{a.returncode}, {b.returncode}",
            first_line(b.stderr),
            f"metrics.csv steps {steps}",
            a.returncode == 0 and b.returncode == 2 and len(steps) == len(set(steps)),
        )
    if want("F09"):
        # resK for F09: a GAN killed at step 6 of 1000
        background(
            f"{gan} --out runs/resK --config resume.yaml --max-steps 1000",
            probe,
            signal.SIGKILL,
            lambda: (
                (probe / "runs/resK/checkpoints/best.pt").exists()
                and metrics_step(probe / "runs/resK/metrics.csv") >= 6
            ),
        )
    if want("F10"):
        # F10-F12: full disks
        for id_, size in (("F10", 6), ("F11", 9), ("F12", 11)):
            folder = probe / f"full{size}"
            mount(folder, size)
            try:
                result = sh(f"{gan} --out full{size}/run --config resume.yaml --max-steps 6", probe)
                listing = sh(f"ls -la full{size}/run/checkpoints | tail -n +4 | awk '{{print $5, $9}}'", probe).stdout
                tmp_left = ".tmp" in listing
                record(
                    id_,
                    f"{gan} --out full{size}/run --config resume.yaml --max-steps 6  ({size} MB tmpfs)",
                    str(result.returncode),
                    first_line(result.stderr),
                    "checkpoints: " + " ".join(listing.split()),
                    not tmp_left and ("Traceback" not in result.stderr),
                )
            finally:
                unmount(folder)
    return results


def sha_inputs(probe: Path) -> dict[str, str]:
    out = {}
    for root in ("data", "fx", "m", "sec"):
        for path in sorted((probe / root).rglob("*")):
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(probe))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", type=Path)
    parser.add_argument("--only", default="", help="comma-separated case ids (no faults)")
    parser.add_argument("--slow", action="store_true", help="also run M18a (100 000 rows, minutes)")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--faults", default="", help="comma-separated fault ids to run (F01..F10; F10 = F10-F12)")
    parser.add_argument(
        "--in-process", action="store_true", help="run plain coinseg commands in this process (typer's test runner)"
    )
    args = parser.parse_args()
    probe: Path = args.probe.resolve()
    wrapper = probe / "coinseg"
    if not probe.exists():
        probe.mkdir(parents=True)
        wrapper.write_text(
            "#!/bin/sh\nexec nice -n 10 env PYTHONPATH=" + shlex.quote(str(SRC)) + " python3 -c "
            "\"import sys; sys.argv[0] = 'coinseg'; from coinseg.cli import app; app(prog_name='coinseg')\" \"$@\"\n"
        )
        wrapper.chmod(0o755)
        sh("coinseg synth data --n-slices 200 --size 64", probe)
        sh(f"PYTHONPATH={shlex.quote(str(SRC))} python3 {HERE / 'reliability_fixtures.py'} .", probe)
        prepare_runs(probe)
    (probe / "o").mkdir(exist_ok=True)
    before = sha_inputs(probe)
    chosen = [c for c in cases() if (not args.only or c.id in args.only.split(",")) and (args.slow or not c.slow)]
    if args.faults:
        chosen = [c for c in chosen if c.id == "F09"]
    results = []
    if args.faults:
        results += run_faults(probe, set(args.faults.split(",")))
    elif not args.only and not args.no_faults:
        results += run_faults(probe)
    for case in chosen:
        if case.pre:
            sh(case.pre, probe)
        ro = probe / "ro"
        if case.extra.get("ro"):
            mount(ro, 1, read_only=True)
        tic = time.time()
        try:
            result = (in_process(case.cmd, probe) if args.in_process else None) or sh(case.cmd, probe, case.timeout)
            code, stderr = result.returncode, result.stderr
        except subprocess.TimeoutExpired:
            code, stderr = 124, "timed out"
        finally:
            if case.extra.get("ro"):
                unmount(ro)
        seconds = time.time() - tic
        out_exists = bool(case.out) and (probe / case.out).exists()
        checked = sh(case.check, probe) if case.check else None
        note = (checked.stdout.strip() + " " + checked.stderr.strip()).strip() if checked else ""
        if not case.check and case.want == "ok":
            note = result.stdout.strip() if code != 124 else ""
        timing = [line for line in stderr.splitlines() if line.endswith(" kB")]
        row = {
            "id": case.id,
            "cmd": case.cmd,
            "exit": str(code),
            "first": first_line(stderr) if code else (first_line(stderr) if "warning" in stderr else ""),
            "out_exists": out_exists,
            "check": " | ".join(note.splitlines()[:6]) + ((" | " + timing[0]) if timing else ""),
            "seconds": round(seconds, 1),
            "expected": judge(case, code, stderr, out_exists),
            "stderr_lines": len([line for line in stderr.splitlines() if line.startswith("error: ")]),
        }
        results.append(row)
        print(case.id, row["exit"], row["expected"], row["first"][:120], "|", row["check"][:150], flush=True)
    after = sha_inputs(probe)
    changed = [k for k in before if after.get(k) != before[k]]
    results.append(
        {
            "id": "F15",
            "cmd": "sha256 of all input files before and after",
            "exit": "-",
            "first": "",
            "check": f"{len(before)} files, {len(changed)} changed: {changed[:5]}",
            "expected": not changed,
        }
    )
    tag = (args.only or args.faults).replace(",", "_")[:40]
    name = f"results-{tag}.jsonl" if tag else "results.jsonl"
    with (probe / name).open("w") as handle:
        for row in results:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    bad = [r["id"] for r in results if not r["expected"]]
    print(f"{len(results)} results, {len(bad)} not as expected: {bad}")
    sys.exit(0)


if __name__ == "__main__":
    main()
