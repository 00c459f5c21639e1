"""The uncertainty options (analysis/_uncertainty.py) through window_maps, the CLI and the
pictures: their checks, the noise models, the seeding rule, the names and units, the report."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from _coverage import poisson_realisations, scaled, sxes_truth
from _data import parse_page

from eelsgpu import io
from eelsgpu.analysis._uncertainty import add_systematic, parse_uncertainty_option
from eelsgpu.analysis.maps import window_maps
from eelsgpu.errors import InputError
from eelsgpu.model import spectrum_image

KW = dict(
    windows={"BK": (170.0, 188.0), "top": (186.0, 188.0)},
    background={"BK": [(160.0, 168.0), (192.0, 198.0)], "top": [(160.0, 168.0), (192.0, 198.0)]},
    background_model="linear",
    ratios=["top/BK"],
    centroid=["BK"],
)


@pytest.fixture(scope="module")
def sxes_si():
    """12 x 10 Poisson realisations of the synthetic SXES band (eelsgpu.synthetic.sxes_image,
    1e5 counts in 170-188 eV): ``(si, expected spectrum)``."""
    e, spec = sxes_truth()
    expected = scaled(e, spec, (170.0, 188.0), 1e5)
    data = poisson_realisations(expected, 120, seed=5).reshape(12, 10, -1)
    return spectrum_image(data, e, chunks=(5, 4), source="sxes.zarr"), expected


def test_uncertainty_arguments_are_checked(sxes_si):
    """Truth: the documented options; each misuse is one InputError naming the problem."""
    si, _ = sxes_si
    w = {"BK": (170.0, 188.0)}
    cases = [
        (dict(uncertainty="bogus"), "analytic"),
        (dict(uncertainty="analytic:5"), "replicas:K"),
        (dict(uncertainty="replicas:x"), "whole number"),
        (dict(uncertainty="replicas", n_replicas=1), "n_replicas"),
        (dict(uncertainty="replicas:10", n_replicas=20), "disagree"),
        (dict(uncertainty="analytic", gain=-1.0), "gain"),
        (dict(n_replicas=10), "also give uncertainty"),
        (dict(uncertainty="analytic", gain=1.0, noise_variance=si), "either"),
        (dict(uncertainty="analytic", noise_variance=np.ones(3)), "DataArray"),
        (
            dict(uncertainty="analytic", noise_variance=xr.DataArray(np.ones(3), dims="z")),
            "energy",
        ),
    ]
    for kw, match in cases:
        with pytest.raises(InputError, match=match):
            window_maps(si, w, device="cpu", **kw)
    assert parse_uncertainty_option("replicas") == ("replicas", None)
    flat = spectrum_image(
        np.zeros((2, 2, si.sizes["energy"])), si["energy"].values, source="z.zarr"
    )
    with pytest.raises(InputError, match="z.zarr"):
        window_maps(flat, w, uncertainty="analytic", device="cpu")


def test_sigma_names_units_and_default_off(sxes_si):
    """Truth: the naming rule <name>_sigma with the value's units and the part it covers; no
    sigma when uncertainty is not asked (the default); the attrs name the noise model."""
    si, _ = sxes_si
    plain = window_maps(si, device="cpu", **KW)
    assert not [n for n in plain.data_vars if str(n).endswith("_sigma")]
    ds = window_maps(si, uncertainty="analytic", gain=1.0, device="cpu", **KW)
    for name in ("BK", "top", "top_over_BK", "BK_centroid_eV"):
        s = ds[f"{name}_sigma"]
        assert s.dims == ds[name].dims and s.attrs["units"] == ds[name].attrs["units"]
        assert s.attrs["sigma_of"] == name and s.attrs["part"] == "counting"
    assert ds.attrs["uncertainty"] == "analytic" and "gain g = 1" in ds.attrs["noise_model"]
    assert ds.attrs["gain_source"] == "given"


def test_replicas_do_not_depend_on_chunks(sxes_si):
    """Truth: the seeding rule (each pixel draws from (seed, its flat index)): the replica sigmas
    are identical whether the image is cut into 5 x 4 or 12 x 10 blocks; another seed changes
    them."""
    si, _ = sxes_si
    a = window_maps(si, uncertainty="replicas:8", gain=1.0, device="cpu", **KW).compute()
    b = window_maps(
        si.chunk({"y": 12, "x": 10}), uncertainty="replicas:8", gain=1.0, device="cpu", **KW
    ).compute()
    c = window_maps(si, uncertainty="replicas:8", gain=1.0, seed=9, device="cpu", **KW).compute()
    np.testing.assert_array_equal(a["BK_sigma"].values, b["BK_sigma"].values)
    assert not np.array_equal(a["BK_sigma"].values, c["BK_sigma"].values)
    assert a.attrs["uncertainty"] == "replicas:8"


def test_measured_noise_variance(sxes_si):
    """Truth: the noise model's definitions. A measured variance equal to 2 x (per channel and
    pixel) gives the same analytic sigmas as gain 2; a per-channel variance (dims energy) is
    broadcast over the pixels; Gaussian replicas with it agree with the analytic sigma to 20 %."""
    si, expected = sxes_si
    var_cube = 2.0 * si
    g2 = window_maps(si, uncertainty="analytic", gain=2.0, device="cpu", **KW).compute()
    v2 = window_maps(si, uncertainty="analytic", noise_variance=var_cube, device="cpu", **KW)
    v2 = v2.compute()
    np.testing.assert_allclose(v2["BK_sigma"].values, g2["BK_sigma"].values, rtol=1e-5)
    assert v2.attrs["gain_source"] == "noise_variance"
    per_channel = xr.DataArray(2.0 * expected, dims="energy")
    an = window_maps(si, uncertainty="analytic", noise_variance=per_channel, device="cpu", **KW)
    rep = window_maps(si, uncertainty="replicas:30", noise_variance=per_channel, device="cpu", **KW)
    an, rep = an.compute(), rep.compute()
    for name in ("BK", "top_over_BK", "BK_centroid_eV"):
        r = float(np.median(an[f"{name}_sigma"]) / np.median(rep[f"{name}_sigma"]))
        assert abs(r - 1) < 0.2, (name, r)


def test_systematic_parts_reported_apart():
    """Truth: quadrature sums. add_systematic adds <name>_sigma_systematic = sqrt(sum of the
    parts squared) with the value's units and the parts' table in attrs, the counting sigma
    untouched."""
    ds = xr.Dataset(
        {
            "thickness_nm": ("x", np.array([50.0, 100.0]), {"units": "nm"}),
            "thickness_nm_sigma": ("x", np.array([1.0, 2.0]), {"units": "nm"}),
        }
    )
    out = add_systematic(
        ds,
        "thickness_nm",
        {
            "mean_free_path": (0.1 * ds["thickness_nm"], "10 % (Iakoubovskii 2008)"),
            "zlp_model": (3.0, "spread of the ZLP models"),
        },
    )
    np.testing.assert_allclose(
        out["thickness_nm_sigma_systematic"].values, np.hypot([5.0, 10.0], 3.0)
    )
    attrs = out["thickness_nm_sigma_systematic"].attrs
    assert attrs["units"] == "nm" and set(attrs["parts"]) == {"mean_free_path", "zlp_model"}
    np.testing.assert_array_equal(out["thickness_nm_sigma"].values, [1.0, 2.0])


def test_cli_maps_uncertainty_and_pictures(tmp_path, capsys, sxes_si):
    """Truth: the CLI's documented options and the pictures' pairing rule. `eelsgpu maps
    --uncertainty replicas:10 --gain 1` writes <name>_sigma maps, says the noise model, and its
    PNGs show each map beside its uncertainty (two image panels, the second the relative sigma
    in %); the HTML report pairs them the same way (no separate sigma figure) and says so in
    the caption. A bad --uncertainty is refused with the usage error (rc 2)."""
    import matplotlib

    matplotlib.use("Agg")
    from eelsgpu.cli import main
    from eelsgpu.report import write_report

    si, _ = sxes_si
    io.write_store(si.to_dataset(name="signal"), tmp_path / "sx.zarr")
    args = ["maps", str(tmp_path / "sx.zarr"), "-o", str(tmp_path / "m.zarr")]
    args += ["--window", "BK=170:188", "--background", "BK=160:168", "--background", "BK=192:198"]
    args += ["--background-model", "linear", "--centroid", "BK", "--device", "cpu"]
    rc = main(
        args + ["--uncertainty", "replicas:10", "--gain", "1", "--png-dir", str(tmp_path / "png")]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "uncertainty: replicas:10; noise model: Poisson counting" in out
    res = io.open_store(tmp_path / "m.zarr")
    assert res["BK_sigma"].attrs["uncertainty"] == "replicas:10"
    assert not (tmp_path / "png" / "BK_sigma.png").exists()
    assert (tmp_path / "png" / "BK.png").exists()
    from eelsgpu.plotting import plot_map

    fig = plot_map(res["BK"], sigma=res["BK_sigma"])
    images = [a for a in fig.axes if a.get_images()]
    assert len(images) == 2 and images[1].get_gid() == "sigma"
    rel = images[1].get_images()[0].get_array()
    expect = 100 * res["BK_sigma"].values / res["BK"].values
    np.testing.assert_allclose(np.ma.filled(rel, np.nan), expect, rtol=1e-5)
    page, _ = parse_page(write_report(tmp_path / "m.zarr", tmp_path / "r.html"))
    assert not any("BK_sigma" in c and c.startswith("BK_sigma") for c in page.captions)
    assert any("relative sigma" in c and "BK_sigma" in c for c in page.captions)
    assert main(args + ["--uncertainty", "replicas:many", "--quiet"]) == 2


def test_spectra_band_is_plus_minus_one_sigma():
    """Truth: the band's definition. plot_spectra with bands= shades y - sigma to y + sigma
    around the named spectrum (read back from the drawn polygon), and only around it."""
    import matplotlib

    matplotlib.use("Agg")
    from eelsgpu.plotting import plot_spectra

    e = np.linspace(0.0, 10.0, 51)
    y = xr.DataArray(5 + np.sin(e), dims="energy", coords={"energy": e}, attrs={"units": "1/eV"})
    sig = xr.DataArray(0.1 + 0.02 * e, dims="energy", coords={"energy": e})
    fig = plot_spectra({"ssd": y, "other": 2 * y}, bands={"ssd": sig})
    (band,) = [c for c in fig.axes[0].collections if c.get_gid() == "band"]
    verts = band.get_paths()[0].vertices
    dev = verts[:, 1] - np.interp(verts[:, 0], e, y.values)
    np.testing.assert_allclose(np.abs(dev), np.interp(verts[:, 0], e, sig.values), atol=1e-9)
    assert (dev > 0).sum() >= e.size and (dev < 0).sum() >= e.size  # both edges, every channel
    assert band.get_label() == "ssd +-1 sigma"
