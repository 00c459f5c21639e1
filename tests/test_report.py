"""The HTML report: one self-contained page with every map of a store, chosen spectra and the
run's parameters. Checked by parsing the page (html.parser) and decoding its pictures."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

import numpy as np
import pytest

from eelsgpu import io
from eelsgpu.analysis.bandgap import bandgap
from eelsgpu.errors import InputError
from eelsgpu.model import spectrum_image
from eelsgpu.plotting import map_variables
from eelsgpu.report import write_report


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.attrs, self.captions, self.cells = [], [], [], [], []
        self._in_caption = self._in_td = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag == "img":
            self.imgs.append(dict(attrs))
        self._in_caption = self._in_caption or tag == "figcaption"
        self._in_td = self._in_td or tag == "td"
        if tag == "figcaption":
            self.captions.append("")

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False
        if tag == "td":
            self._in_td = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data
        if self._in_td:
            self.cells.append(data)


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


def _parse(path):
    page = _Page()
    text = path.read_text(encoding="utf-8")
    page.feed(text)
    page.close()
    return page, text


def test_report_embeds_every_map_with_title_and_unit(gap_store):
    """Truth: the store's own map variables and their units/long names; every one must be an
    embedded PNG (valid PNG bytes) captioned with its quantity and unit, with no external
    reference (every src is a data: URI, no href/script/link), plus the parameter table."""
    path, si_path, tmp = gap_store
    out = write_report(path, tmp / "report.html", pixels=[(3, 4), (0, 0)], spectra=si_path)
    page, text = _parse(out)
    ds = io.open_store(path)
    names = map_variables(ds)
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
