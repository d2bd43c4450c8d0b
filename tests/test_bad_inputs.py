"""Bad input, clear error: each row is a mistake a user can make; the command must exit with the
status of its kind (metaland.errors: 2 params, 3 data, 5 tracking, 7 system), print one short
paragraph that names the key or file and a fix, never a traceback, and write nothing."""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from metaland.errors import EXIT_DATA, EXIT_SYSTEM, EXIT_TRACKING, EXIT_USAGE
from tests.test_cli import RUN, assert_user_error, run_cli

REPO = Path(__file__).resolve().parents[1]


def edit(change):
    """A case that edits the params mapping."""

    def apply(raw: dict, work: Path, monkeypatch) -> None:
        change(raw)

    return apply


def defaults(raw: dict) -> dict:
    return raw["studies"]["guiroy2019"]["defaults"]


def empty_dataset_folder(raw: dict, work: Path, monkeypatch) -> None:
    (work / "data" / "omniglot-small").mkdir(parents=True)


def unreachable_tracking_server(raw: dict, work: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens


def read_only_outputs(raw: dict, work: Path, monkeypatch) -> None:
    (work / "runs").mkdir()
    (work / "runs").chmod(0o500)


def invalid_yaml(raw: dict, work: Path, monkeypatch) -> None:
    raw.clear()
    raw["__text__"] = "studies: [unclosed"


def text_edit(change):
    """A case that edits the params file's text (bytes), for what a mapping cannot hold."""

    def apply(raw: dict, work: Path, monkeypatch) -> None:
        raw["__bytes__"] = change(yaml.safe_dump({k: v for k, v in raw.items()}, sort_keys=False))

    return apply


def replace_once(old: str, new: str):
    def change(text: str) -> bytes:
        assert old in text, old
        return text.replace(old, new, 1).encode()

    return change


NESTED = "x: " + "[" * 20_000 + "]" * 20_000 + "\n"
BOMB_ROOT = "- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"- &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


def alias_bomb_in_a_wrong_type(raw: dict, work: Path, monkeypatch) -> None:
    """9^9 strings where `ways` wants an integer (row 12): refused before it is built, in a short message."""
    text = yaml.safe_dump(raw, sort_keys=False)
    bomb = "    ways: " + BOMB_ROOT.replace("\n- ", ", ").replace("- ", "[", 1).rstrip("\n") + "]\n"
    raw["__bytes__"] = text.replace(f"    ways: {raw['runs'][RUN]['ways']}\n", bomb, 1).encode()


def serving_once(reply: bytes | None, health: bool):
    """A case whose MLFLOW_TRACKING_URI is a local server that answers /health (if ``health``) and
    every other request with ``reply`` (None: never answers)."""

    def apply(raw: dict, work: Path, monkeypatch) -> None:
        port = start_fake_server(reply, health)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")

    return apply


def start_fake_server(reply: bytes | None, health: bool) -> int:
    """A thread that answers each connection: /health with 200 (if ``health``), anything else with
    ``reply`` (raw bytes, any protocol) or, for None, silence until the client gives up."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            connection, _ = server.accept()
            request = connection.recv(65536)
            if health and b" /health " in request:
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
            elif reply is None:
                threading.Timer(30, connection.close).start()
                continue
            else:
                connection.sendall(reply)
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def case(name, setup, argv, needles, status=EXIT_USAGE, marks=()):
    return pytest.param(name, setup, argv, needles, status, id=name, marks=marks)


CASES = [
    case("unknown algorithm", edit(lambda r: r["runs"][RUN].update(algorithm="mamll")), (), ["mamll", "maml"]),
    case("negative learning rate", edit(lambda r: defaults(r)["train"].update(inner_lr=-0.1)), (), ["inner_lr = -0.1"]),
    case("NaN in a param", edit(lambda r: defaults(r)["train"].update(meta_lr=math.nan)), (), ["meta_lr", "finite"]),
    case("wrong type", edit(lambda r: r["runs"][RUN].update(ways="five")), (), [f"runs.{RUN}.ways", "five"]),
    case("more ways than classes", edit(lambda r: r["runs"][RUN].update(ways=999)), (), ["ways = 999", "classes"]),
    case("shots + queries > images per class", edit(lambda r: defaults(r).update(queries=30)), (), ["queries", "20"]),
    case("missing params key", edit(lambda r: r["runs"][RUN].pop("seed")), (), [f"runs.{RUN}", "seed"]),
    case("unknown key", edit(lambda r: defaults(r)["train"].update(inner_lrr=0.1)), (), ["inner_lrr", "inner_lr"]),
    case(
        "unknown probe",
        edit(lambda r: r["studies"]["guiroy2019"]["probe"]["probes"].update(curvatur={})),
        (),
        ["curvatur"],
    ),
    case("undeclared dataset", edit(lambda r: r["runs"][RUN].update(dataset="omniglott")), (), ["omniglott"]),
    case("unknown run", edit(lambda r: None), ("train", "guiroy2019-nope"), ["guiroy2019-nope"]),
    case("invalid YAML", invalid_yaml, (), ["not valid YAML"]),
    case("empty dataset folder", empty_dataset_folder, (), ["omniglot-small", "fetch"], EXIT_DATA),
    case(
        "unreachable tracking server",
        unreachable_tracking_server,
        (),
        ["http://127.0.0.1:9", "cannot be reached"],
        EXIT_TRACKING,
    ),
    case(
        "read-only output folder",
        read_only_outputs,
        (),
        ["permission was denied", "runs"],
        EXIT_SYSTEM,
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders"),
    ),
    case(
        "bad probe option",
        edit(lambda r: r["studies"]["guiroy2019"]["probe"]["probes"].update(curvature={"tol": 2})),
        ("probe", RUN),
        ["curvature", "tol"],
    ),
    case(
        "checkpoints off the logging grid",
        edit(lambda r: defaults(r)["train"].update(checkpoint_every=7)),
        (),
        ["checkpoint_every = 7", "log_every"],
    ),
    # issue 28, row 9: a study that probes nothing
    case(
        "every extract rule off",
        edit(lambda r: r["studies"]["guiroy2019"]["extract"].update(every=0, log_spaced=0, best=False, final=False)),
        ("extract", RUN),
        ["studies.guiroy2019.extract", "every rule is off"],
    ),
    # issue 28, row 12: params files a YAML reader chokes on, or silently misreads
    case("a Latin-1 byte", text_edit(lambda t: t.encode() + "# caf\xe9\n".encode("latin-1")), (), ["UTF-8", "0xe9"]),
    case("a 5000-digit integer", text_edit(replace_once("seed: 0", "seed: " + "9" * 5000)), (), ["5000 digits"]),
    case("20000 nested brackets", text_edit(lambda t: (t + NESTED).encode()), (), ["nests", "more than 32 deep"]),
    case(
        "a 250-character run key",
        edit(lambda r: r["runs"].update({"guiroy2019-" + "a" * 240: r["runs"].pop(RUN)})),
        ("train", "guiroy2019-" + "a" * 240),
        ["251 characters long", "at most 100"],
    ),
    case(
        "Adam betas outside [0, 1)",
        edit(lambda r: defaults(r)["train"].update(adam_betas=[1.5, -3])),
        (),
        ["adam_betas.0 = 1.5", "less than 1", "adam_betas.1 = -3"],
    ),
    case(
        "a negative Adam beta",
        edit(lambda r: defaults(r)["train"].update(adam_betas=[-0.9, 0.5])),
        (),
        ["adam_betas.0 = -0.9", "greater than or equal to 0"],
    ),
    case(
        "a duplicate key",
        text_edit(replace_once("profile: ci\n", "profile: ci\nprofile: default\n")),
        (),
        ["repeats a key", '"profile"', "lines 1 and 2"],
    ),
    case(
        "a run key ending in a newline",
        text_edit(replace_once(f"  {RUN}:\n", f'  "{RUN}\\n":\n')),
        (),
        ["line break or another control character"],
    ),
    case("shots: yes", text_edit(replace_once("    shots: 1\n", "    shots: yes\n")), (), [f"{RUN}.shots = 'yes'"]),
    case("an alias bomb in a wrongly typed value", alias_bomb_in_a_wrong_type, (), ["alias"]),
    case(
        "a unicode run key",
        edit(lambda r: r["runs"].update({"guiroy2019-ünïcode": r["runs"].pop(RUN)})),
        ("train", "guiroy2019-ünïcode"),
        ["guiroy2019-ünïcode", "DVC stage names cannot carry"],
    ),
    # issue 28, rows 6 and 10: a tracking server that answers /health but not its API, or another protocol
    case("tracking API answers 503", serving_once(UNAVAILABLE, True), (), ["HTTP 503", "server's log"], EXIT_TRACKING),
    case("tracking API hangs", serving_once(None, True), (), ["did not answer within 5 s"], EXIT_TRACKING),
    case(
        "tracking port speaks another protocol",
        serving_once(b"SSH-2.0-OpenSSH_9.2\r\n", False),
        (),
        ["does not speak MLflow's HTTP API", "another service"],
        EXIT_TRACKING,
    ),
]


@pytest.mark.parametrize(("case", "setup", "argv", "needles", "status"), CASES)
def test_bad_input_gives_a_clear_error_and_writes_nothing(
    case, setup, argv, needles, status, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())
    setup(raw, tmp_path, monkeypatch)
    params = tmp_path / "params.yaml"
    if "__bytes__" in raw:
        params.write_bytes(raw["__bytes__"])
    else:
        params.write_text(raw["__text__"] if "__text__" in raw else yaml.safe_dump(raw, sort_keys=False))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    command = argv or ("train", RUN)
    started = time.monotonic()
    code, _, err = run_cli(capsys, *command, "--params", str(params))
    assert_user_error(code, err, *needles, status=status)
    assert len(err) < 2000 and time.monotonic() - started < 60, "short, and fast"
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"{case}: wrote {sorted(set(after) - set(before))}"
    if (tmp_path / "runs").exists():
        (tmp_path / "runs").chmod(0o700)
        shutil.rmtree(tmp_path / "runs")
