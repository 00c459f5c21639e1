"""The uncertainty options of the analysis commands (issue 14): ``--uncertainty``, ``--gain``,
``--seed``.

``--uncertainty analytic`` (counting noise by linearisation) or ``--uncertainty replicas:K``
(``K`` Poisson replicas per pixel) adds ``<name>_sigma`` beside each map; ``--gain G`` gives the
detector's data units per counted electron (else it is estimated from the data's channel noise,
and the command says so). See :mod:`eelsgpu.analysis._uncertainty`.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_uncertainty_options(p: argparse.ArgumentParser) -> None:
    """Add ``--uncertainty analytic|replicas:K``, ``--gain G`` and ``--seed N`` to ``p``."""
    p.add_argument(
        "--uncertainty",
        metavar="analytic|replicas:K",
        help="add <name>_sigma maps: counting noise propagated analytically, or from K Poisson "
        "replicas per pixel (default: none)",
    )
    p.add_argument(
        "--gain",
        type=float,
        metavar="G",
        help="detector data units per counted electron (default: estimated from the data's "
        "channel noise)",
    )
    p.add_argument("--seed", type=int, default=0, help="replica seed (default 0)")


def uncertainty_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The analysis function's keyword arguments from the parsed options."""
    if not args.uncertainty:
        return {}
    return {"uncertainty": args.uncertainty, "gain": args.gain, "seed": args.seed}


def describe(ds: Any) -> str | None:
    """One line saying which uncertainty and noise model a result carries (None without one)."""
    method = ds.attrs.get("uncertainty")
    if not method or method == "none":
        return None
    return f"uncertainty: {method}; noise model: {ds.attrs.get('noise_model', '?')}"
