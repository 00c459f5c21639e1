"""The film-fit picture (eelsgpu.plotting.plot_film_fit) and its section of ``eelsgpu report``.

Truths: the fit_dielectric Dataset itself (each drawn curve must be the Dataset's values at its
energies), an optical table written here with linear eps (so the value read at any energy is
known exactly, and nothing is drawn outside the table's range), and the Rakic 1995 Al table of
shared/data (eps1(8 eV) = -2.67, eps1(10 eV) = -1.33, the values issue 15 quotes).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from _data import parse_page

import eelsgpu
from eelsgpu import synthetic
from eelsgpu.errors import InputError


@pytest.fixture(scope="module")
def fit():
    """fit_dielectric of two synthetic coupled Drude films (15/1 eV, 12 and 30 nm, exact SSD)."""
    kw = dict(n_channels=400, dispersion_eV=0.1, offset_eV=-5.0, beam_energy_keV=200.0,
              collection_angle_mrad=100.0, zlp_counts=1e6, dtype=np.float64)  # fmt: skip
    model = synthetic.Drude(15.0, 1.0)
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw).true_mean_free_path_nm)
    t = np.array([12.0, 30.0])
    sim = synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=(2,), surface="coupled", **kw
    )
    return eelsgpu.fit_dielectric(
        sim["true_ssd"],
        zlp_intensity=sim["true_zlp_intensity"],
        beam_energy_keV=200.0,
        collection_angle_mrad=100.0,
        retardation=False,
        window_eV=(4.0, 30.0),
        jitter=0.0,
        iterations=10,
        check_quadrature=False,
    )


def _table(path):
    """A CSV like shared/data/reference/optical_constants with eps1 = 0.5 E - 3, eps2 = 2 - 0.05 E
    on 6-28 eV in uneven steps."""
    e = np.array([6.0, 7.3, 9.1, 12.0, 15.5, 21.0, 28.0])
    rows = "\n".join(f"{x},{1.24 / x},1,1,{0.5 * x - 3},{2 - 0.05 * x},0.1" for x in e)
    path.write_text(
        "# source: test\n# columns: ...\nenergy_eV,wavelength_um,n,k,eps1,eps2,elf\n" + rows + "\n"
    )
    return path


def test_film_fit_picture_draws_the_datasets_curves_and_the_table_at_its_energies(fit, tmp_path):
    """Every line of the picture is the Dataset's (data, model, bulk, surface on energy_fit; eps1
    and eps2 on energy, with a sigma band each) at the chosen pixel, and the optical curve is the
    table linearly interpolated at the plotted energies: 0.5 E - 3 exactly, NaN outside 6-28 eV."""
    import matplotlib.pyplot as plt

    from eelsgpu.plotting import plot_film_fit

    fig = plot_film_fit(fit, (1,), optical=_table(tmp_path / "lin.csv"))
    ax_s, ax_e = fig.axes[:2]
    lines = {ln.get_label(): ln for ln in ax_s.get_lines()}
    nav = fit["model"].dims[0]
    px = fit.isel({nav: 1})
    np.testing.assert_array_equal(lines["model"].get_xdata(), px.energy_fit.values)
    np.testing.assert_array_equal(lines["model"].get_ydata(), px.model.values)
    np.testing.assert_array_equal(lines["data"].get_ydata(), px.data.values)
    np.testing.assert_array_equal(lines["bulk"].get_ydata(), px.model_bulk.values)
    np.testing.assert_array_equal(lines["surface / guided"].get_ydata(), px.model_surface.values)
    assert "oxide / interface" not in lines  # no oxide in this model: its part is zero
    eps = {ln.get_label(): ln for ln in ax_e.get_lines()}
    x = eps["eps1 (fit)"].get_xdata()
    np.testing.assert_array_equal(eps["eps1 (fit)"].get_ydata(), px.eps1.sel(energy=x).values)
    ref = eps["eps1 (lin)"].get_ydata()
    inside = (x >= 6.0) & (x <= 28.0)
    np.testing.assert_allclose(ref[inside], 0.5 * x[inside] - 3.0, rtol=1e-12, atol=1e-12)
    assert np.all(np.isnan(ref[~inside])) and (~inside).any()
    ref2 = eps["eps2 (lin)"].get_ydata()
    np.testing.assert_allclose(ref2[inside], 2.0 - 0.05 * x[inside], rtol=1e-12, atol=1e-12)
    assert len([c for c in ax_e.collections if c.get_gid() == "band"]) == 2
    plt.close(fig)
    with pytest.raises(InputError, match="pixel"):
        plot_film_fit(fit, (5,))
    with pytest.raises(InputError, match="fit_dielectric"):
        plot_film_fit(xr.Dataset(), (0,))


def test_rakic_table_reads_the_issues_values(shared_data):
    """The Rakic 1995 Al table read by read_optical_table gives eps1(8 eV) = -2.67 and eps1(10 eV)
    = -1.33 (issue 15's values) to 0.02."""
    from eelsgpu.plotting import optical_at, read_optical_table

    tab = read_optical_table(shared_data / "reference" / "optical_constants" / "Al_Rakic.csv")
    np.testing.assert_allclose(optical_at(tab, np.array([8.0, 10.0]), "eps1"), [-2.67, -1.33],
                               atol=0.02)  # fmt: skip


def test_report_of_a_film_fit_store_with_an_optical_table(fit, tmp_path):
    """``eelsgpu report FIT.zarr --optical CSV --pixels 0;1`` has a Film fit section with one
    picture per pixel whose caption names the table and the pixel's fitted thickness (the
    Dataset's value); --optical on a store that is not a film fit is one clear error."""
    from eelsgpu import io
    from eelsgpu.cli import main

    store = tmp_path / "fit.zarr"
    io.write_store(fit, store)
    table = _table(tmp_path / "lin.csv")
    out = tmp_path / "r.html"
    assert main(["report", str(store), "-o", str(out), "--optical", str(table),
                 "--pixels", "0;1", "-q"]) == 0  # fmt: skip
    page, text = parse_page(out)
    assert "<h2>Film fit</h2>" in text
    film = [c for c in page.captions if c.startswith("film fit, pixel")]
    assert len(film) == 2 and all("beside lin" in c for c in film)
    t1 = float(fit.thickness_nm.values[1])
    assert f"thickness_nm = {t1:.4g}" in film[1]
    other = tmp_path / "other.zarr"
    io.write_store(xr.Dataset({"thickness_nm": (("y", "x"), np.ones((2, 2)))}), other)
    assert main(["report", str(other), "-o", str(tmp_path / "o.html"), "--optical",
                 str(table), "-q"]) == 2  # fmt: skip
