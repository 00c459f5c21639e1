"""Map and spectrum pictures: things on the figure that could be wrong (scale bar length, grey
flagged pixels, labels), checked against values computed here from the coordinates."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
import xarray as xr

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eelsgpu.plotting import (  # noqa: E402
    FLAGGED_GREY,
    map_variables,
    nice_length,
    plot_decomposition,
    plot_map,
    plot_spectra,
    scale_bar_label,
)


def _map(ny, nx, step_nm, unit="nm", values=None, name="thickness", units="nm", long_name=None):
    v = np.random.default_rng(0).normal(50.0, 5.0, (ny, nx)) if values is None else values
    da = xr.DataArray(
        v,
        dims=("y", "x"),
        name=name,
        coords={"y": np.arange(ny) * step_nm, "x": np.arange(nx) * step_nm},
        attrs={"units": units, "long_name": long_name or name},
    )
    da["x"].attrs["units"] = unit
    da["y"].attrs["units"] = unit
    return da


def _bar(ax):
    return next(p for p in ax.patches if p.get_gid() == "scalebar")


@pytest.mark.parametrize(
    "ny,nx,step,expect_text,expect_len",
    [(40, 60, 0.37, "2 nm", 2.0), (30, 100, 50.0, "1 µm", 1000.0), (20, 20, 0.02, "0.5 Å", 0.05)],
)
def test_scale_bar_is_a_round_fraction_of_the_field_of_view(ny, nx, step, expect_text, expect_len):
    """Truth: the field of view nx * step from the coordinates. The bar is a 1/2/5 x 10^n length
    between 8 % and 20 % of it, its drawn width equals its label, and large/small lengths are
    written in µm/Å."""
    fig = plot_map(_map(ny, nx, step))
    ax = fig.axes[0]
    label = scale_bar_label(ax)
    assert label == expect_text
    fov = nx * step
    bar = _bar(ax)
    assert bar.get_width() == pytest.approx(expect_len)
    assert 0.08 <= bar.get_width() / fov <= 0.2 + 1e-9
    mant = bar.get_width() / 10 ** np.floor(np.log10(bar.get_width()))
    assert round(mant, 9) in (1.0, 2.0, 5.0)
    plt.close(fig)


def test_nice_length_values():
    """Truth: hand-computed round lengths (largest 1/2/5 x 10^n below a fifth of the span)."""
    assert [nice_length(s) for s in (37.0, 100.0, 0.9, 12.0, 1e4)] == [5.0, 20.0, 0.1, 2.0, 2000.0]
    assert nice_length(0.0) == 0.0


def test_nan_pixels_are_grey_and_counted():
    """Truth: the NaN block put into the map; its rendered colour is the flagged grey and the
    count in the corner is the number of NaNs."""
    v = np.random.default_rng(1).normal(2.0, 0.1, (20, 30))
    v[5:9, 10:16] = np.nan
    fig = plot_map(_map(20, 30, 1.0, values=v, name="bandgap_eV", units="eV", long_name="Eg"))
    ax = fig.axes[0]
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    h = rgba.shape[0]
    x_disp, y_disp = ax.transData.transform((12.5, 7.0))  # a NaN pixel's centre (x, y in nm)
    px = rgba[int(round(h - y_disp)), int(round(x_disp))][:3] / 255.0
    grey = matplotlib.colors.to_rgb(FLAGGED_GREY)
    assert np.allclose(px, grey, atol=0.02)
    x_ok, y_ok = ax.transData.transform((2.0, 15.0))  # a finite pixel is not grey
    assert not np.allclose(
        rgba[int(round(h - y_ok)), int(round(x_ok))][:3] / 255.0, grey, atol=0.05
    )
    texts = [t.get_text() for t in ax.texts if t.get_gid() == "flagged-count"]
    assert texts == ["24 flagged px (grey)"]
    plt.close(fig)


def test_title_and_colour_bar_carry_quantity_and_unit():
    """Truth: the DataArray's long_name and units attributes must appear on the axes."""
    fig = plot_map(_map(10, 12, 2.0, name="t", units="nm", long_name="absolute thickness"))
    ax, cax = fig.axes[0], fig.axes[1]
    assert ax.get_title() == "absolute thickness (nm)"
    assert cax.get_ylabel() == "absolute thickness (nm)"
    plt.close(fig)


def test_robust_limits_ignore_a_hot_pixel():
    """Truth: values ~N(50, 5) with one pixel at 1e6: colour limits stay near the 1st/99th
    percentiles of the data, and the colour bar shows an arrow for values beyond."""
    v = np.random.default_rng(2).normal(50.0, 5.0, (30, 30))
    v[3, 3] = 1e6
    fig = plot_map(_map(30, 30, 1.0, values=v))
    im = fig.axes[0].images[0]
    lo, hi = im.get_clim()
    p1, p99 = np.percentile(v, [1, 99])
    assert lo == pytest.approx(p1) and hi == pytest.approx(p99)
    assert hi < 100
    cb = im.colorbar
    assert cb.extend in ("max", "both")
    plt.close(fig)


def test_uncalibrated_pixels_get_no_scale_bar():
    """Truth: coordinates in px carry no length: no scale bar, and a note says so."""
    da = _map(8, 8, 1.0, unit="px")
    fig = plot_map(da)
    ax = fig.axes[0]
    assert scale_bar_label(ax) is None
    assert any(t.get_gid() == "no-calibration" for t in ax.texts)
    plt.close(fig)


def test_label_map_has_named_ticks_and_grey_flags():
    """Truth: gap_type-like labels (flag_values -1/0/1, meanings flagged/direct/indirect):
    the colour bar names direct and indirect, and -1 pixels are counted as flagged."""
    v = np.zeros((6, 8), np.int32)
    v[:, 4:] = 1
    v[0, 0] = -1
    da = _map(6, 8, 1.0, values=v, name="gap_type", units="", long_name="band gap type")
    da.attrs.update(flag_values=[-1, 0, 1], flag_meanings="flagged direct indirect")
    fig = plot_map(da)
    cax = fig.axes[1]
    ticks = [t.get_text() for t in cax.get_yticklabels()]
    assert ticks == ["direct", "indirect"]
    assert [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "flagged-count"] == [
        "1 flagged px (grey)"
    ]
    plt.close(fig)


def test_line_scan_profile_and_map_variables():
    """Truth: a 1-D map is drawn as a profile with its unit on the y axis; map_variables lists
    the (y, x) and line variables of a Dataset but not spectra or scalars."""
    da = xr.DataArray(
        np.linspace(0, 1, 10),
        dims=("x",),
        coords={"x": np.arange(10) * 3.0},
        attrs={"units": "", "long_name": "t/lambda"},
        name="tl",
    )
    da["x"].attrs["units"] = "nm"
    fig = plot_map(da)
    assert fig.axes[0].get_xlabel() == "x (nm)"
    assert fig.axes[0].get_ylabel() == "t/lambda"
    plt.close(fig)
    ds = xr.Dataset(
        {
            "a": (("y", "x"), np.ones((3, 4))),
            "s": (("y", "x", "energy"), np.ones((3, 4, 5))),
            "k": ((), 1.0),
        }
    )
    assert map_variables(ds) == ["a"]


def test_spectra_labels_and_log_scale_for_zero_loss(tmp_path):
    """Truth: a spectrum with a ZLP 1000x its losses gets a log axis (auto); one without does
    not; axis labels carry the energy unit and the quantity; the PNG is written."""
    e = np.arange(-5, 50, 0.1)
    zlp = 1e5 * np.exp(-0.5 * (e / 0.3) ** 2) + 100 * np.exp(-0.5 * ((e - 15) / 2) ** 2)
    da = xr.DataArray(
        zlp,
        dims=("energy",),
        coords={"energy": e},
        attrs={"units": "counts", "long_name": "signal"},
    )
    da["energy"].attrs.update(units="eV", long_name="energy loss")
    p = tmp_path / "s.png"
    fig = plot_spectra({"pixel (1, 2)": da}, p)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "energy loss (eV)"
    assert ax.get_ylabel() == "signal (counts)"
    assert p.stat().st_size > 1000
    fig2 = plot_spectra({"loss": da.where(da.energy > 5, drop=True)})
    assert fig2.axes[0].get_yscale() == "linear"
    assert re.search("loss", fig2.axes[0].get_legend().get_texts()[0].get_text())
    plt.close("all")


def test_signed_map_uses_a_centred_diverging_colour_map():
    """Truth: values symmetric about 0 (a PCA loading): the colour limits are symmetric, so
    0 sits at the middle (white) of the diverging map; a positive map keeps viridis."""
    v = np.linspace(-3.0, 2.0, 100).reshape(10, 10)
    fig = plot_map(_map(10, 10, 1.0, values=v, units=""))
    im = fig.axes[0].images[0]
    lo, hi = im.get_clim()
    assert lo == pytest.approx(-hi)
    assert im.get_cmap().name.startswith("RdBu_r")
    fig2 = plot_map(_map(10, 10, 1.0))
    assert fig2.axes[0].images[0].get_cmap().name.startswith("viridis")
    plt.close("all")


def test_spectra_shade_the_given_windows():
    """Truth: the windows passed in; each is a shaded span with exactly those energy limits."""
    e = np.arange(800.0, 1100.0, 1.0)
    da = xr.DataArray(
        1e4 * (e / 800) ** -3, dims=("energy",), coords={"energy": e}, attrs={"units": "counts"}
    )
    fig = plot_spectra({"s": da}, spans=[(931.0, 1000.0, "Cu"), (850.0, 925.0, "bg Cu")])
    spans = [p for p in fig.axes[0].patches if p.get_gid() == "span"]
    xs = sorted((round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6)) for p in spans)
    assert xs == [(850.0, 925.0), (931.0, 1000.0)]
    assert {t.get_text() for t in fig.axes[0].texts} >= {"Cu", "bg Cu"}
    plt.close(fig)


def test_decomposition_pictures(tmp_path):
    """Truth: the components of a PCA of a rank-2 Poisson image (2 kept, 8 on the scree): a scree
    plot and one picture per kept component are written (moved here from the decomposition
    tests with plot_decomposition)."""
    from eelsgpu.analysis.decomposition import decompose
    from eelsgpu.model import spectrum_image

    rng = np.random.default_rng(0)
    maps, spectra = rng.random((16, 16, 2)), rng.random((2, 60))
    si = spectrum_image(rng.poisson(200 * maps @ spectra), np.arange(60.0), chunks=(8, 8))
    ds = decompose(si, "pca", n_components=2, n_scree=8, device="cpu")
    paths = plot_decomposition(ds, tmp_path)
    assert {p.name for p in paths} == {"scree.png", "component_00.png", "component_01.png"}
    assert all(p.stat().st_size > 1000 for p in paths)
