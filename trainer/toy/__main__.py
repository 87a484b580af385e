"""``python -m trainer.toy --method antisd --steps 60``: the toy RL loop from the command line.

Every :class:`trainer.toy.loop.Config` field is a flag (``--prompts-per-step 32``); ``--param k=v``
adds a method parameter. Without ``--teacher-url`` the loop starts its own server
(``client.launcher.ServerProcess``, hf backend) with ``TC_WEIGHTS_ROOT`` inside the run folder.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import MISSING, fields

from trainer.toy.loop import METHODS, Config, main


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainer.toy", description=__doc__)
    for f in fields(Config):
        if f.name == "method_params":
            continue
        if f.name == "method_state":
            ap.add_argument(
                "--method-state",
                type=json.loads,
                default=None,
                help="initial method state as JSON, e.g. AntiSD's gate held open: "
                '\'{"warmup_history": [0,0,0,0,0], "h_warm": 0, "tau_down": 0, "g": 1}\'',
            )
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if f.type in ("bool", bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            kw = {"choices": METHODS} if f.name == "method" else {}
            ap.add_argument(flag, type=kind, default=default, **kw)
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="method parameter (JSON value), e.g. --param lam_max=0.25",
    )
    return ap


def config_from_args(argv: list[str] | None = None) -> Config:
    args = vars(build_parser().parse_args(argv))
    params = {}
    for item in args.pop("param"):
        name, _, value = item.partition("=")
        params[name] = parse_value(value)
    return Config(**args, method_params=params)


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the server this run started is stopped with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    summary = main(config_from_args())
    keep = ("method", "steps", "initial", "final", "seconds_per_step")
    print(json.dumps({k: summary[k] for k in keep}, indent=2))
