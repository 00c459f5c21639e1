"""Test data builders and helpers that several test modules share (each lives here once).

Data with a known truth: the three-material image of the clustering tests
(:data:`CLUSTER_MATERIALS`, :func:`cluster_regions`), the three-spectrum mixture of the
decomposition tests (:func:`mixture`), the band-gap onsets (:func:`onset_spectra`), the ZLP
drifts of the alignment tests (:data:`DRIFTS`); and :func:`parse_page`, which reads an HTML report
back. The fixtures that build from them are in tests/conftest.py (``three_phase``,
``mixture_image``, ``drifted``).
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from eelsgpu import synthetic

# --------------------------------------------------------------------------- clustering
#: The three materials of the clustering image, by region 0, 1, 2.
CLUSTER_MATERIALS = [
    synthetic.Drude(15.0, 1.0),  # Al-like metal
    synthetic.Lorentz(16.6, 5.07, 3.7),  # Si-like insulator
    synthetic.Drude(22.0, 4.0),  # a broader, higher plasmon
]


def cluster_regions(shape: tuple[int, int] = (16, 16)) -> np.ndarray:
    """Region labels: 0 on the left half, 1 on the right, 2 a round particle on the left."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    reg = np.zeros(shape, int)
    reg[:, nx // 2 :] = 1
    reg[(yy - ny // 2) ** 2 + (xx - nx // 4) ** 2 <= (ny // 5) ** 2] = 2  # a particle
    return reg


# --------------------------------------------------------------------------- decomposition
def mixture(ny=32, nx=32, ne=200, scale=40.0, seed=0):
    """Three known spectra mixed with three known smooth maps, Poisson noise: ``(energy,
    spectra (3, ne), maps (3, ny, nx), truth (ny, nx, ne), noisy)``."""
    e = np.linspace(100, 300, ne)

    def g(c, s):
        return np.exp(-0.5 * ((e - c) / s) ** 2)

    spectra = np.stack(
        [g(150, 10) + 0.3 * g(220, 20), g(190, 8) + 0.5 * g(260, 15), g(240, 12) + 0.2 * g(130, 30)]
    )
    yy, xx = np.mgrid[0:ny, 0:nx] / (max(ny, nx) - 1.0)
    maps = np.stack(
        [np.clip(1 - xx, 0, 1) ** 2, np.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.05), yy**2]
    )
    truth = scale * np.einsum("kyx,ke->yxe", maps, spectra)
    noisy = np.random.default_rng(seed).poisson(truth).astype(float)
    return e, spectra, maps, truth, noisy


# --------------------------------------------------------------------------- band gap
#: eV per channel of the synthetic onsets.
ONSET_DISP = 0.02


def onset_spectra(eg_eV, b, n_pix, *, amplitude=1000.0, tail=2e4, floor=20.0, seed=0):
    """Poisson spectra of A (E - Eg)^b + a ZLP tail tail*(E/0.5)^-2.5 + a flat floor.

    The noise level: A = 1000 counts per channel at 1 eV above the gap, a tail of 2e4 counts at
    0.5 eV (about 700 at 2 eV), 20 counts of floor; channels of 0.02 eV from 0.1 to 9 eV. The
    tail exponent 2.5 is not on the fit's grid of power-law exponents (1, 2, 3, 4, 6).
    """
    e = np.arange(0.1, 9.0, ONSET_DISP)
    lam = amplitude * np.clip(e - eg_eV, 0, None) ** b + tail * (e / 0.5) ** -2.5 + floor
    rng = np.random.default_rng(seed)
    return e, rng.poisson(np.broadcast_to(lam, (n_pix, e.size))).astype(np.float64)


# --------------------------------------------------------------------------- ZLP alignment
#: ZLP drifts (eV) at sub-channel positions of 0.05 eV channels (the ``drifted`` fixture).
DRIFTS = np.array([-0.371, -0.2, -0.0123, 0.0, 0.013, 0.025, 0.1666, 0.333, 0.4])


# --------------------------------------------------------------------------- HTML reports
class Page(HTMLParser):
    """An HTML report read back: its tags, images, attributes, figure captions, table cells."""

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


def parse_page(path: Path) -> tuple[Page, str]:
    """The report at ``path`` parsed, and its text."""
    page = Page()
    text = Path(path).read_text(encoding="utf-8")
    page.feed(text)
    page.close()
    return page, text
