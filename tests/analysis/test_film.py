"""The film options of eelsgpu.synthetic and eelsgpu.fit_dielectric (analysis/film.py).

Truths: the classic synthetic model (eq. 31 + eq. 36 from eelsgpu.kernels.dielectric/surface,
independent of the film models) which the film path must equal in its limits (a 1000 nm coupled
film is eq. 31 + eq. 36: check F3; the non-retarded bulk alone is eq. 31); byte-identity of the
existing outputs; and the synthetic truths (t, Ep, Gamma, d) that the fit must return.
"""

from __future__ import annotations

import numpy as np
import pytest

import eelsgpu
from eelsgpu import synthetic
from eelsgpu.errors import InputError

KW = dict(
    n_channels=400,
    dispersion_eV=0.1,
    offset_eV=-5.0,
    beam_energy_keV=200.0,
    collection_angle_mrad=100.0,
    zlp_counts=1e6,
    dtype=np.float64,
)


def coupled_films(model, t_nm, **kw):
    """eelsgpu.synthetic's coupled-film image (noise-free) of ``model`` at thicknesses ``t_nm``
    (one pixel each), on :data:`KW`'s axis (``kw`` overrides it)."""
    kw = {**KW, **kw}
    lam = float(
        synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw)["true_mean_free_path_nm"]
    )
    t = np.asarray(t_nm, dtype=float)
    return synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=t.shape, surface="coupled", **kw
    )


def nr_fit_kw(sim, window_eV, **kw):
    """fit_dielectric's arguments for an NR coupled-film fit of ``sim`` (200 kV, 100 mrad, no
    jitter)."""
    return dict(
        zlp_intensity=sim["true_zlp_intensity"],
        beam_energy_keV=200.0,
        collection_angle_mrad=100.0,
        retardation=False,
        window_eV=window_eV,
        jitter=0.0,
        **kw,
    )


@pytest.mark.parametrize(("old", "new"), [(True, "eq36"), (False, "none")])
def test_string_spellings_are_the_old_outputs(old, new):
    """surface="eq36" / "none" give exactly (bytes) what surface=True / False give."""
    a = synthetic.low_loss_spectrum(synthetic.Drude(15, 1), t_over_lambda=0.4, surface=old, **KW)
    b = synthetic.low_loss_spectrum(synthetic.Drude(15, 1), t_over_lambda=0.4, surface=new, **KW)
    for v in ("signal", "true_ssd", "true_t_nm"):
        assert a[v].values.tobytes() == b[v].values.tobytes()


@pytest.mark.parametrize(
    ("film", "classic", "tol"), [("bulk", False, 2e-4), ("coupled", True, 5e-4)]
)
def test_film_path_limits_equal_the_classic_model(film, classic, tol):
    """The film path's non-retarded bulk equals eq. 31's classic synthetic SSD; a thick (about
    1000 nm) coupled film equals eq. 31 + eq. 36 (check F3 through the whole generator: channel
    integration, plural scattering, ZLP). Tolerances: the exact solid angle sin(theta) (1e-4)."""
    kw = dict(KW, collection_angle_mrad=20.0, n_channels=500)
    lam = float(
        synthetic.low_loss_spectrum(synthetic.Drude(15, 1), t_over_lambda=0.1, **kw)[
            "true_mean_free_path_nm"
        ]
    )
    tl = 1000.0 / lam
    a = synthetic.low_loss_spectrum(synthetic.Drude(15, 1), t_over_lambda=tl, surface=classic, **kw)
    b = synthetic.low_loss_spectrum(synthetic.Drude(15, 1), t_over_lambda=tl, surface=film, **kw)
    e = a.energy.values
    m = (e > 3.0) & (e < 40.0)
    ra, rb = a.true_ssd.values[m], b.true_ssd.values[m]
    assert np.max(np.abs(rb / ra - 1.0)) < tol
    # the spectrum with plural scattering and the ZLP, at a thickness whose plural scattering
    # stays inside the padded grid (t/lambda = 7 aliases in either model); 1e-3: the film path
    # leaves channel 0 (-0.05..0.05 eV) empty, which the plural terms feel at a few eV
    a = synthetic.low_loss_spectrum(
        synthetic.Drude(15, 1), t_over_lambda=0.5, surface=classic, **kw
    )
    b = synthetic.low_loss_spectrum(synthetic.Drude(15, 1), t_over_lambda=0.5, surface=film, **kw)
    sa, sb = a.signal.values[m], b.signal.values[m]
    assert np.max(np.abs(sb / sa - 1.0)) < (1e-3 if film == "bulk" else 0.05)


def test_fit_dielectric_recovers_synthetic_coupled_films():
    """fit_dielectric on eelsgpu.synthetic's coupled-film SSDs (noise-free, 10 and 25 nm of
    Drude 15/0.8 eV, 0.1 eV channels) returns t, Ep, Gamma to 2e-3 (the generator integrates
    each channel with 4 nodes, the fit with 2), eps1 on the energy axis to 0.5 %, and no fatal
    flag; the model reproduces the data."""
    model = synthetic.Drude(15.0, 0.8)
    lam = float(
        synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **KW)["true_mean_free_path_nm"]
    )
    t = np.array([10.0, 25.0])
    sim = synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=(2,), surface="coupled", **KW
    )
    ds = eelsgpu.fit_dielectric(
        sim["true_ssd"],
        zlp_intensity=sim["true_zlp_intensity"],
        beam_energy_keV=200.0,
        collection_angle_mrad=100.0,
        retardation=False,
        window_eV=(4.0, 30.0),
        jitter=0.0,
        check_quadrature=False,
    )
    np.testing.assert_allclose(ds.thickness_nm.values, t, rtol=2e-3)
    np.testing.assert_allclose(ds.plasmon_energy_eV.values, 15.0, rtol=2e-4)
    np.testing.assert_allclose(ds.damping_eV.values, 0.8, rtol=2e-3)
    e = ds.energy.values
    m = (e > 4.0) & (e < 30.0)
    true = model.eps(e[m])
    err = np.abs(ds.eps1.values[:, m] - true.real) / np.sqrt(np.mean(true.real**2))
    assert np.max(err) < 5e-3
    assert bool(ds.valid.all())
    rel = np.abs(ds.model.values / ds.data.values - 1.0)
    assert np.max(rel) < 2e-3
    for name in ("thickness_nm", "plasmon_energy_eV", "damping_eV"):
        assert np.all(ds[name + "_sigma"].values > 0)


def test_fit_dielectric_layered_synthetic_oxide():
    """An oxide/Al/oxide film from eelsgpu.synthetic (surface="layered", 2.5 nm of the notes'
    oxide per face, 15 nm of Drude 15/0.6, non-retarded, Poisson noise at N0 = 1e6): the fitted
    oxide thickness and t within 3 sigma of the truth."""
    model = synthetic.Drude(15.0, 0.6)
    lam = float(
        synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **KW)["true_mean_free_path_nm"]
    )
    sim = synthetic.low_loss_spectrum(
        model, t_over_lambda=15.0 / lam, surface="layered", oxide_nm=2.5, **KW
    )
    rng = np.random.default_rng(3)
    ssd = sim["true_ssd"].copy(data=rng.poisson(np.clip(sim["true_ssd"].values, 0, None)) * 1.0)
    ds = eelsgpu.fit_dielectric(
        ssd,
        zlp_intensity=1e6,
        beam_energy_keV=200.0,
        collection_angle_mrad=100.0,
        retardation=False,
        oxide_nm="fit",
        window_eV=(4.5, 30.0),
        bin_eV=0.2,
        nodes_per_channel=1,
        jitter=0.0,
        iterations=14,
        check_quadrature=False,
    )
    for name, truth in (("oxide_nm", 2.5), ("thickness_nm", 15.0)):
        got, sig = float(ds[name]), float(ds[name + "_sigma"])
        assert abs(got - truth) < 3 * sig, (name, got, sig)


def test_fit_dielectric_input_errors():
    """One clear InputError for: an SSD on the data's axis (reconvolved-zlp), a bad oxide_nm,
    no N0, a window with too few channels, an unknown model."""
    sim = synthetic.low_loss_spectrum(synthetic.Drude(15, 1), t_over_lambda=0.3, **KW)
    ssd = sim["true_ssd"].assign_attrs(beam_energy_keV=200.0, collection_angle_mrad=100.0)
    with pytest.raises(InputError, match="band-limited"):
        eelsgpu.fit_dielectric(ssd.assign_attrs(output="reconvolved-zlp"), zlp_intensity=1e6)
    with pytest.raises(InputError, match="oxide_nm"):
        eelsgpu.fit_dielectric(ssd, zlp_intensity=1e6, oxide_nm="thick")
    with pytest.raises(InputError, match="oxide_nm"):
        eelsgpu.fit_dielectric(ssd, zlp_intensity=1e6, oxide_nm=-1.0)
    with pytest.raises(InputError, match="N0"):
        eelsgpu.fit_dielectric(ssd)
    with pytest.raises(InputError, match="too few"):
        eelsgpu.fit_dielectric(ssd, zlp_intensity=1e6, window_eV=(10.0, 10.5))
    with pytest.raises(InputError, match="model"):
        eelsgpu.fit_dielectric(ssd, zlp_intensity=1e6, model="slab")


def test_fit_dielectric_seeded_from_classic_kk():
    """Seeded from the classic KK result of the same SSD (kk=, thin-film-theory.md section 2),
    the fit of a 14 nm coupled film (where the KK thickness is off by the surface losses) returns
    the synthetic truth t = 14 nm, Ep = 15 eV to 1e-3, as from the SSD's own seed."""
    import warnings

    model = synthetic.Drude(15.0, 1.0)
    lam = float(
        synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **KW)["true_mean_free_path_nm"]
    )
    sim = synthetic.low_loss_image(
        model, t_over_lambda=np.array([14.0]) / lam, shape=(1,), surface="coupled", **KW
    )
    ssd = sim["true_ssd"].assign_attrs(beam_energy_keV=200.0, collection_angle_mrad=100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kk = eelsgpu.kramers_kronig(
            ssd, zlp_intensity=sim["true_zlp_intensity"], metal=True, device="cpu"
        ).compute()
    assert abs(float(kk.thickness_nm[0]) / 14.0 - 1) > 0.02  # the surface losses bias it
    ds = eelsgpu.fit_dielectric(
        ssd, zlp_intensity=sim["true_zlp_intensity"], retardation=False, window_eV=(4.0, 30.0),
        kk=kk, check_quadrature=False,
    )  # fmt: skip
    assert abs(float(ds.thickness_nm[0]) / 14.0 - 1) < 1e-3
    assert abs(float(ds.plasmon_energy_eV[0]) / 15.0 - 1) < 1e-3


def test_fit_flags_join_the_quality_map_at_bits_14_to_23():
    """Truth: the two bit tables (film_fit.FIT_BITS and kernels.quality) and the inputs' own
    bits. Bits 14-23 of quality are FIT_BITS in the same order with the same fatality; a
    fit_dielectric result's quality is the upstream quality | (fit_flags << 14): an upstream
    AXIS_OFFSET is kept, a pixel with NaN counts is FIT_NOT_CONVERGED (fatal) and not valid."""
    import xarray as xr

    from eelsgpu.kernels import film_fit as FF
    from eelsgpu.kernels import quality as Q

    for (name, (bit, fatal, _)), (qname, (qbit, qfatal, _)) in zip(
        FF.FIT_BITS.items(), list(Q.BITS.items())[14:], strict=True
    ):
        assert (qname, qbit, qfatal) == (name, bit << Q.FIT_SHIFT, fatal)
    assert Q.FATAL & Q.FIT_NOT_CONVERGED and Q.FATAL & Q.CERENKOV_NO_RETARDATION
    model = synthetic.Drude(15.0, 0.8)
    sim = synthetic.low_loss_image(model, t_over_lambda=0.2, shape=(2,), surface="coupled", **KW)
    ssd = sim["true_ssd"].copy()
    ssd[1] = np.nan
    upstream = np.array([Q.AXIS_OFFSET, 0], dtype=np.uint32)
    ds_in = xr.Dataset(
        {
            "ssd": ssd,
            "zlp_intensity": sim["true_zlp_intensity"],
            "quality": (ssd.dims[:1], upstream),
            "valid": (ssd.dims[:1], np.array([True, True])),
        }
    )
    ds = eelsgpu.fit_dielectric(
        ds_in,
        beam_energy_keV=200.0,
        collection_angle_mrad=100.0,
        retardation=False,
        window_eV=(4.0, 30.0),
        jitter=0.0,
        iterations=5,
        check_quadrature=False,
    )
    q = ds.quality.values.astype(np.int64)
    flags = ds.fit_flags.values.astype(np.int64)
    np.testing.assert_array_equal(q, upstream | (flags << 14))
    assert q[0] & Q.AXIS_OFFSET and q[1] & Q.FIT_NOT_CONVERGED
    np.testing.assert_array_equal(ds.valid.values, (q & Q.FATAL) == 0)
    assert not bool(ds.valid.values[1])


def test_kramers_kronig_surface_fit_on_the_classic_failure_case():
    """Issue 15's failure case of the classic surface iteration: Drude 15 eV / 1 eV at 96 nm,
    300 kV, beta 10 mrad, eq. 31 + eq. 36 truth from eelsgpu.synthetic (exact SSD), beside a
    400 nm film of the same metal whose iteration converges. surface="iterate" keeps about 9 %
    RMS in eps and 5 % in t and flags SURFACE_NOT_CORRECTED; surface="fit" (the eq. 36 model)
    refits that pixel only: eps within 3 % RMS from Ep/4 to 3 Ep, t within 1 %, the flag cleared,
    surface_method [1, 0], and the 400 nm pixel's results byte-identical to surface="iterate"
    (which is the default: same bytes as no surface argument)."""
    from eelsgpu.kernels import quality as Q

    model = synthetic.Drude(15.0, 1.0)
    kw = dict(KW, beam_energy_keV=300.0, collection_angle_mrad=10.0, n_channels=768)
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw).true_mean_free_path_nm)
    t = np.array([96.0, 400.0])
    sim = synthetic.low_loss_image(model, t_over_lambda=t / lam, shape=(2,), surface=True, **kw)
    args = dict(
        zlp_intensity=sim["true_zlp_intensity"],
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        metal=True,
        iterations=10,
        device="cpu",
        zlp_fwhm_eV=0.3,
        cubes="all",
    )
    default = eelsgpu.kramers_kronig(sim["true_ssd"], **args).compute()
    it = eelsgpu.kramers_kronig(sim["true_ssd"], surface="iterate", **args).compute()
    fit = eelsgpu.kramers_kronig(
        sim["true_ssd"], surface="fit", surface_fit={"model": "eq36", "retardation": False}, **args
    ).compute()
    for name in default.data_vars:
        assert default[name].values.tobytes() == it[name].values.tobytes(), name
    e = fit.energy.values
    m = (e >= 15.0 / 4) & (e <= 45.0)
    true = model.eps(e[m])

    def rms(ds, i):
        eps = ds.eps1.values[i, m] + 1j * ds.eps2.values[i, m]
        return np.sqrt(np.mean(np.abs(eps - true) ** 2) / np.mean(np.abs(true) ** 2))

    assert rms(it, 0) > 0.05 and abs(float(it.thickness_nm[0]) / 96.0 - 1.0) > 0.03
    assert int(it.quality[0]) & Q.SURFACE_NOT_CORRECTED
    assert rms(fit, 0) < 0.03
    assert abs(float(fit.thickness_nm[0]) / 96.0 - 1.0) < 0.01
    assert not int(fit.quality[0]) & Q.SURFACE_NOT_CORRECTED
    assert bool(fit.valid[0])
    np.testing.assert_array_equal(fit.surface_method.values, [1, 0])
    # the loss function and n, k re-derived from the fitted eps at the fitted pixel
    eps0 = fit.eps1.values[0] + 1j * fit.eps2.values[0]
    np.testing.assert_allclose(fit.loss_function.values[0], np.imag(-1.0 / eps0), rtol=1e-9)
    np.testing.assert_allclose(fit.refractive_index.values[0], np.sqrt(eps0).real, rtol=1e-9)
    for name in it.data_vars:
        assert it[name].values[1].tobytes() == fit[name].values[1].tobytes(), name
    with pytest.raises(InputError, match="surface"):
        eelsgpu.kramers_kronig(sim["true_ssd"], surface="fitted", **args)


def test_in_memory_image_is_cut_for_every_core_with_the_same_results():
    """An in-memory image is cut by the engine into at least two blocks per core where it has
    the pixels (the film declaration's ``min_block_pixels``: the fit is ~0.1 s per spectrum; the
    default 256 would make these four pixels one block), and every pixel's result is the one the
    whole image in one block gives (truth: the fit is per pixel; same numbers to 1e-9)."""
    import os

    from eelsgpu.engine.blocks import _memory_chunks
    from eelsgpu.kernels.blocks_film import film_declaration

    t = np.array([10.0, 14.0, 18.0, 25.0])
    sim = coupled_films(synthetic.Drude(15.0, 0.8), t)
    decl = film_declaration(["thickness_nm"], np.array([1.0]), np.array([1.0]))
    host = np.asarray(sim["true_ssd"].values)
    cut = _memory_chunks(host, decl.min_block_pixels)
    assert 4 // cut[0] == min(4, 2 * (os.cpu_count() or 1))
    assert _memory_chunks(host)[0] == 4  # the engine's default for cheap kernels: one block
    kw = nr_fit_kw(sim, (4.0, 30.0), check_quadrature=False)
    split = eelsgpu.fit_dielectric(sim["true_ssd"], **kw).compute()
    whole = eelsgpu.fit_dielectric(sim["true_ssd"].chunk(), **kw).compute()
    for name in ("thickness_nm", "plasmon_energy_eV", "eps1", "model"):
        np.testing.assert_allclose(split[name].values, whole[name].values, rtol=1e-9)
    np.testing.assert_allclose(split.thickness_nm.values, t, rtol=2e-3)


@pytest.mark.parametrize(("gamma", "flagged"), [(0.6, False), (0.2, True)])
def test_quadrature_flag_catches_the_channel_rule_on_a_sharp_plasmon(gamma, flagged):
    """The default one node per channel (the centre rule) is exact enough for a 0.6 eV wide
    plasmon at 0.1 eV channels (truth: eelsgpu.synthetic's coupled film, 4 nodes per channel:
    every parameter within 0.1 sigma, no QUADRATURE), not for a 0.2 eV wide one (Gamma 2-4
    sigma off, run): there ``QUADRATURE`` is set, and two nodes per channel bring Gamma back
    within 1 sigma."""
    from eelsgpu.kernels.film_fit import FIT_BITS

    sim = coupled_films(synthetic.Drude(15.0, gamma), [20.0], offset_eV=0.0)
    fit_kw = nr_fit_kw(sim, (4.5, 25.0))
    ds = eelsgpu.fit_dielectric(sim["true_ssd"], **fit_kw)
    z = abs(float(ds.damping_eV[0]) - gamma) / float(ds.damping_eV_sigma[0])
    bit = FIT_BITS["QUADRATURE"][0]
    assert bool(int(ds.fit_flags[0]) & bit) == flagged
    if not flagged:
        assert z < 0.1
        return
    assert z > 1.0
    two = eelsgpu.fit_dielectric(sim["true_ssd"], nodes_per_channel=2, **fit_kw)
    assert abs(float(two.damping_eV[0]) - gamma) / float(two.damping_eV_sigma[0]) < 1.0
