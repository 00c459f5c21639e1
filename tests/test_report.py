"""The HTML report: one self-contained page with every map of a store, chosen spectra and the
run's parameters. Checked by parsing the page (html.parser) and decoding its pictures."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from _data import parse_page

from eelsgpu import io
from eelsgpu.analysis.bandgap import bandgap
from eelsgpu.errors import InputError
from eelsgpu.model import spectrum_image
from eelsgpu.plotting import map_variables
from eelsgpu.report import write_report


@pytest.fixture(scope="module")
def gap_store(tmp_path_factory):
    """A store of band-gap results (synthetic onsets, Eg 1.5 to 3 eV along x, one no-onset
    block) with 2.5 nm pixels, and the spectrum image it came from."""
    tmp = tmp_path_factory.mktemp("report")
    ny, nx = 6, 8
    e = np.arange(0.1, 6.0, 0.02)
    eg = 1.5 + 1.5 * np.linspace(0, 1, nx)[None, :] * np.ones((ny, 1))
    lam = 1000 * np.clip(e - eg[..., None], 0, None) ** 1.5 + 2e4 * (e / 0.5) ** -2.5 + 20
    lam[0:2, 0:2] = 2e4 * (e / 0.5) ** -2.5 + 20
    counts = np.random.default_rng(0).poisson(lam).astype(np.float32)
    si = spectrum_image(
        counts, e, x=np.arange(nx) * 2.5, y=np.arange(ny) * 2.5, source="onsets.zarr"
    )
    si_path = io.write_store(si, tmp / "onsets.zarr")
    ds = bandgap(si, window_eV=(0.8, 5.0), model="indirect", device="cpu")
    path = io.write_store(ds, tmp / "gap.zarr")
    return path, si_path, tmp


def test_report_embeds_every_map_with_title_and_unit(gap_store):
    """Truth: the store's own map variables and their units/long names; every one must be an
    embedded PNG (valid PNG bytes) captioned with its quantity and unit, with no external
    reference (every src is a data: URI, no href/script/link), plus the parameter table."""
    path, si_path, tmp = gap_store
    out = write_report(path, tmp / "report.html", pixels=[(3, 4), (0, 0)], spectra=si_path)
    page, text = parse_page(out)
    ds = io.open_store(path)
    names = [n for n in map_variables(ds) if n != "quality"]  # its own section (test below)
    assert set(names) >= {"bandgap_eV", "gap_type", "valid", "fit_quality"}
    alts = [im.get("alt", "") for im in page.imgs]
    for name in names:
        alt = next((a for a in alts if a.startswith(f"map of {name}:")), None)
        assert alt is not None, name
        unit = ds[name].attrs.get("units", "")
        long_name = ds[name].attrs.get("long_name", name)
        cap = next(c for c in page.captions if c.endswith(name) or f"— {name}" in c or name in c)
        assert long_name in cap
        if unit:
            assert f"({unit})" in cap
    for im in page.imgs:
        src = im["src"]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for key, value in page.attrs:
        assert key != "href"
        if key == "src":
            assert value.startswith("data:")
    assert "script" not in page.tags and "link" not in page.tags
    # pixel spectra: an overview with the pixels marked, and one figure per pixel
    assert any(a == "chosen pixels" for a in alts)
    assert sum(a.startswith("spectra at pixel") for a in alts) == 2
    assert any("y = 7.5 nm, x = 10 nm" in c for c in page.captions)
    # the run's parameters, from ds.attrs
    assert "bandgap_model" in page.cells and "indirect" in page.cells
    assert "onsets.zarr" in text


def test_report_refuses_what_it_cannot_draw(gap_store, tmp_path):
    """Truth: the gap store holds no spectra and no clusters: asking for pixel spectra without
    --spectra, a pixel outside the image, or --clusters are clear errors, not empty pages."""
    path, si_path, _ = gap_store
    with pytest.raises(InputError, match="--spectra"):
        write_report(path, tmp_path / "a.html", pixels=[(1, 1)])
    with pytest.raises(InputError, match="outside"):
        write_report(path, tmp_path / "b.html", pixels=[(60, 1)], spectra=si_path)
    with pytest.raises(InputError, match="cluster"):
        write_report(path, tmp_path / "c.html", clusters=True)
    assert not (tmp_path / "a.html").exists()


def test_quality_section_draws_and_explains_every_bit_set(gap_store, tmp_path):
    """Truth: the store's own quality map (bits of eelsgpu.kernels.quality) and the report's
    advice table (FLAG_ADVICE). The report has a Quality section with the picture of which bits
    are set where (one panel per bit set, titled with its pixel count, counted here from the
    map) and a table row per bit set: its name, fatal or warning, its pixel count and what to
    do; bits not set get no row. The gap store's no-onset block (2 x 2 px) is NO_ONSET."""
    from eelsgpu.kernels import quality
    from eelsgpu.report import FLAG_ADVICE

    path, _, _ = gap_store
    ds = io.open_store(path)
    qmap = ds["quality"].values.astype(np.int64)
    set_bits = {n: int(np.sum((qmap & b) > 0)) for n, (b, _, _) in quality.BITS.items()}
    set_bits = {n: c for n, c in set_bits.items() if c}
    assert set_bits.get("NO_ONSET", 0) >= 4
    out = write_report(path, tmp_path / "q.html")
    page, text = parse_page(out)
    assert "Quality (quality)" in text
    assert any(im.get("alt") == "quality bits of quality" for im in page.imgs)
    for name, count in set_bits.items():
        assert name in page.cells and str(count) in page.cells
        fatal = quality.BITS[name][1]
        assert ("fatal: not valid" if fatal else "warning") in page.cells
        assert FLAG_ADVICE[name] in page.cells
    for name in set(quality.BITS) - set(set_bits):
        assert name not in page.cells
    assert set(FLAG_ADVICE) == set(quality.BITS)


def test_quality_picture_panels_and_summary():
    """Truth: a constructed quality map (3 x 4 px: EPS2_NEGATIVE on 2 px, SURFACE_NOT_CORRECTED
    on 5, none elsewhere). The picture has the verdict panel and one panel per bit set, titled
    with its name, fatal mark and count; the line-scan form has one row per bit and the verdict;
    the summary counts the pixels without a fatal bit."""
    import xarray as xr

    from eelsgpu.kernels import quality
    from eelsgpu.plotting import plot_map, plot_quality, quality_summary

    qmap = np.zeros((3, 4), np.uint32)
    qmap[0, :2] |= quality.EPS2_NEGATIVE
    qmap[1:, 1:4] |= quality.SURFACE_NOT_CORRECTED
    qmap[2, 3] = 0
    da = xr.DataArray(qmap, dims=("y", "x"), name="quality", attrs=quality.describe())
    fig = plot_quality(da)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["verdict", "EPS2_NEGATIVE (fatal): 2 px", "SURFACE_NOT_CORRECTED: 5 px"]
    assert plot_map(da).axes[1].get_title() == "EPS2_NEGATIVE (fatal): 2 px"  # maps draw it so
    line = plot_quality(da.isel(y=0))
    labels = [t.get_text() for t in line.axes[0].get_yticklabels()]
    assert labels == ["verdict", "EPS2_NEGATIVE (fatal)"]
    assert quality_summary(da).startswith("quality: 10 of 12 pixels without a fatal bit")


def test_readme_explains_every_quality_bit():
    """Truth: the bit table of eelsgpu.kernels.quality. The README's "Real data" section has a
    row for every bit, with the right fatal column, as the report's advice table has an entry
    for every bit."""
    from pathlib import Path

    from eelsgpu.kernels import quality
    from eelsgpu.report import FLAG_ADVICE

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Real data", 1)[1].split("\n## ", 1)[0]
    for name, (_, fatal, _) in quality.BITS.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), "")
        assert row, name
        assert row.split("|")[2].strip() == ("yes" if fatal else "no"), name
    assert set(FLAG_ADVICE) == set(quality.BITS)


def test_report_draws_kk_sigmas_beside_maps_and_as_bands(tmp_path):
    """Truth: the KK result's own sigma variables (analytic, issue 14). The report of a KK
    run with sigmas draws each map with a sigma beside its relative sigma (the caption names
    ``thickness_nm_sigma`` and ``plasmon_energy_eV_sigma``, with the method), leaves no sigma
    map on its own, and shades +-1 sigma of eps1 and eps2 on a pixel's spectra (the caption
    says so); every picture decodes as a PNG."""
    import xarray as xr

    from eelsgpu import synthetic
    from eelsgpu.analysis.kramers_kronig import kramers_kronig
    from eelsgpu.report import report_html

    sim = synthetic.low_loss_image(
        synthetic.Drude(15.0, 1.0), shape=(2, 3), t_over_lambda=0.5, n_channels=512,
        dispersion_eV=0.1, total_counts=1e6, noise=False, dtype=np.float64,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    ssd = sim["true_ssd"].copy(data=rng.poisson(sim["true_ssd"].values).astype(np.float64))
    ssd.attrs.update(beam_energy_keV=200.0, collection_angle_mrad=10.0)
    ds = kramers_kronig(
        xr.Dataset({"ssd": ssd, "zlp_intensity": sim["true_zlp_intensity"]}), metal=True,
        low_energy_cutoff_eV=1.5, device="cpu", uncertainty="analytic", gain=1.0,
        variables=("eps1", "eps2", "thickness_nm", "plasmon_energy_eV"),
    ).compute()  # fmt: skip
    out = tmp_path / "kk.html"
    out.write_text(report_html(ds, pixels=[(0, 1)]), encoding="utf-8")
    page, text = parse_page(out)
    maps = [c for c in page.captions if "beside it" in c]
    for name in ("thickness_nm_sigma", "plasmon_energy_eV_sigma"):
        assert any(name in c and "analytic" in c for c in maps), name
    alts = [im.get("alt", "") for im in page.imgs]
    assert not any(a.startswith("map of thickness_nm_sigma") for a in alts)
    pixel = [c for c in page.captions if c.startswith("pixel (0, 1)")]
    assert pixel and "shaded: +-1 sigma (counting, analytic) of eps1, eps2" in pixel[0]
    for im in page.imgs:
        assert base64.b64decode(im["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
