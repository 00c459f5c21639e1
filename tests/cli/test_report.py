"""`eelsgpu cluster` then `eelsgpu report --clusters`: the page holds the cluster pictures."""

from __future__ import annotations

import numpy as np
from _data import parse_page

from eelsgpu import io, synthetic
from eelsgpu.cli import main


def test_report_cli_with_clusters(tmp_path):
    """Truth: a two-material synthetic image; `eelsgpu cluster` then `eelsgpu report
    --clusters` make a page with the cluster map and the cluster-mean spectra figure."""
    reg = np.zeros((8, 8), int)
    reg[:, 4:] = 1
    sim = synthetic.low_loss_image(
        [synthetic.Drude(15.0, 1.0), synthetic.Drude(25.0, 3.0)],
        regions=reg,
        shape=(8, 8),
        n_channels=256,
        dispersion_eV=0.2,
        t_over_lambda=0.5,
        noise=True,
    )
    si_path = io.write_store(sim[["signal"]], tmp_path / "ll.zarr")
    assert (
        main(
            [
                "cluster",
                str(si_path),
                "-o",
                str(tmp_path / "cl.zarr"),
                "-k",
                "2",
                "-q",
                "--png",
                str(tmp_path / "cl.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "cl.png").stat().st_size > 1000
    assert (tmp_path / "cl_spectra.png").exists()
    html_path = tmp_path / "cl.html"
    assert (
        main(["report", str(tmp_path / "cl.zarr"), "-o", str(html_path), "--clusters", "-q"]) == 0
    )
    page, _ = parse_page(html_path)
    alts = [im.get("alt", "") for im in page.imgs]
    assert any(a.startswith("map of cluster:") for a in alts)
    assert "cluster-mean spectra" in alts


def test_report_never_replaces_an_input_or_another_file(tmp_path, capsys):
    """Truth: the result store and a data file the test writes; a report aimed at either (or at
    a name that is not .html) is refused with one line and both are byte for byte intact."""
    import xarray as xr

    store = io.write_store(xr.Dataset({"t": (("y", "x"), np.ones((2, 2)))}), tmp_path / "r.zarr")
    data = tmp_path / "scan.dm4"
    data.write_bytes(b"DM4 bytes")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for out, message in [
        (store, "overlaps the input"),
        (store / "x.html", "overlaps the input"),
        (data, "give a name ending in .html"),
    ]:
        assert main(["report", str(store), "-o", str(out), "-q"]) == 2
        assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
