"""The film fit on the command line: the runner of ``eelsgpu kk --model`` (eelsgpu.cli._film,
also through its standalone parser) and ``eelsgpu kk --surface fit``."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from eelsgpu import synthetic
from eelsgpu.errors import InputError


def test_film_runner_on_an_ssd_store(tmp_path, capsys):
    """Truth: eelsgpu.synthetic's coupled Drude films (15/1 eV, 12 and 30 nm; exact SSD): the
    store's thickness within 0.5 %, its eps1 on the energy axis, the model beside the data, and a
    summary line; a bad --oxide is one clear error."""
    from eelsgpu import io
    from eelsgpu.cli._film import main

    kw = dict(n_channels=400, dispersion_eV=0.1, offset_eV=-5.0, beam_energy_keV=200.0,
              collection_angle_mrad=100.0, zlp_counts=1e6, dtype=np.float64)  # fmt: skip
    model = synthetic.Drude(15.0, 1.0)
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw).true_mean_free_path_nm)
    t = np.array([12.0, 30.0])
    sim = synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=(2,), surface="coupled", **kw
    )
    ssd = xr.Dataset(
        {"ssd": sim["true_ssd"], "zlp_intensity": sim["true_zlp_intensity"]},
        attrs={"beam_energy_keV": 200.0, "collection_angle_mrad": 100.0},
    )
    io.write_store(ssd, tmp_path / "ssd.zarr")
    out = tmp_path / "fit.zarr"
    args = [str(tmp_path / "ssd.zarr"), "-o", str(out), "--model", "film", "--no-retardation",
            "--window", "4:30", "-q"]  # fmt: skip
    assert main(args) == 0
    res = io.open_store(out)
    np.testing.assert_allclose(res["thickness_nm"].values, t, rtol=5e-3)
    assert {"eps1", "eps2", "loss_function", "model", "data", "fit_flags"} <= set(res.data_vars)
    assert res.attrs["film_model"] == "coupled"
    main(args[:-1] + ["--overwrite"])
    assert "film fit (coupled)" in capsys.readouterr().out
    with pytest.raises(InputError, match="--oxide"):
        main(args + ["--overwrite", "--oxide", "thin"])


def test_eelsgpu_kk_model_on_a_synthetic_film_store(tmp_path, capsys):
    """Truth: eelsgpu.synthetic's coupled Drude films (15/1 eV, 12 and 30 nm; exact SSD) through
    the ``eelsgpu kk`` command itself: with ``--model film`` and no normalisation the store holds
    the fit (thickness within 0.5 %, Ep within 0.1 %, eps1 of the Drude truth within 1 % of its
    RMS over 4-30 eV, quality with the fit bits); without --model and without a normalisation it
    is one clear error line (exit 2); with both --model and --metal the fit wins."""
    from eelsgpu import io
    from eelsgpu.cli import main

    kw = dict(n_channels=400, dispersion_eV=0.1, offset_eV=-5.0, beam_energy_keV=200.0,
              collection_angle_mrad=100.0, zlp_counts=1e6, dtype=np.float64)  # fmt: skip
    model = synthetic.Drude(15.0, 1.0)
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw).true_mean_free_path_nm)
    t = np.array([12.0, 30.0])
    sim = synthetic.low_loss_image(
        model, t_over_lambda=t / lam, shape=(2,), surface="coupled", **kw
    )
    ssd = xr.Dataset(
        {"ssd": sim["true_ssd"], "zlp_intensity": sim["true_zlp_intensity"]},
        attrs={"beam_energy_keV": 200.0, "collection_angle_mrad": 100.0},
    )
    store = tmp_path / "ssd.zarr"
    io.write_store(ssd, store)
    out = tmp_path / "fit.zarr"
    base = ["kk", str(store), "-o", str(out)]
    fit = ["--model", "film", "--no-retardation", "--window", "4:30"]
    assert main(base + fit) == 0
    assert "film fit (coupled)" in capsys.readouterr().out
    res = io.open_store(out)
    assert res.attrs["analysis"] == "fit_dielectric"
    np.testing.assert_allclose(res["thickness_nm"].values, t, rtol=5e-3)
    np.testing.assert_allclose(res["plasmon_energy_eV"].values, 15.0, rtol=1e-3)
    e = res["energy"].values
    m = (e > 4.0) & (e < 30.0)
    true = model.eps(e[m]).real
    err = np.abs(res["eps1"].values[:, m] - true) / np.sqrt(np.mean(true**2))
    assert np.max(err) < 1e-2
    assert "FIT_NOT_CONVERGED" in res["quality"].attrs
    assert np.all(res["valid"].values)
    assert main(base + ["--overwrite"]) == 2
    assert "one normalisation" in capsys.readouterr().err
    assert main(base + fit + ["--overwrite", "--metal", "-q"]) == 0
    assert io.open_store(out).attrs["analysis"] == "fit_dielectric"


def test_cli_kk_surface_fit_on_the_classic_failure_case(tmp_path, capsys):
    """Truth: eelsgpu.synthetic, issue 15's failure case of the surface iteration (Drude 15 eV /
    1 eV at 96 nm, 300 kV, 10 mrad, exact eq. 31 + eq. 36 SSD) beside a 400 nm pixel of the same
    metal. ``eelsgpu kk --metal --iterations 10 --surface fit --model eq36 --no-retardation``
    refits only the pixel the iteration flags: its thickness within 1 % of 96 nm (the iteration
    alone is more than 3 % off), ``surface_method`` [1, 0], the 400 nm pixel's thickness the same
    number as with ``--surface iterate``, and the summary line says how many pixels were fitted."""
    from eelsgpu import io
    from eelsgpu.cli import main

    model = synthetic.Drude(15.0, 1.0)
    kw = dict(
        beam_energy_keV=300.0,
        collection_angle_mrad=10.0,
        n_channels=768,
        dispersion_eV=0.1,
        offset_eV=-5.0,
    )
    lam = float(synthetic.low_loss_spectrum(model, t_over_lambda=0.1, **kw).true_mean_free_path_nm)
    t = np.array([96.0, 400.0])
    sim = synthetic.low_loss_image(model, t_over_lambda=t / lam, shape=(2,), surface=True, **kw)
    ssd = xr.Dataset(
        {"ssd": sim["true_ssd"], "zlp_intensity": sim["true_zlp_intensity"]},
        attrs={k: v for k, v in sim.attrs.items() if k != "synthetic_parameters"},
    )
    io.write_store(ssd, tmp_path / "ssd.zarr")
    common = ["--metal", "--iterations", "10", "--low-energy-cutoff", "0.9", "--device", "cpu"]
    rc = main(["kk", str(tmp_path / "ssd.zarr"), "-o", str(tmp_path / "it.zarr"), *common, "-q"])
    assert rc == 0
    capsys.readouterr()
    rc = main(
        ["kk", str(tmp_path / "ssd.zarr"), "-o", str(tmp_path / "fit.zarr"), *common]
        + ["--surface", "fit", "--model", "eq36", "--no-retardation"]
    )
    assert rc == 0
    it, fit = io.open_store(tmp_path / "it.zarr"), io.open_store(tmp_path / "fit.zarr")
    assert abs(float(it.thickness_nm[0]) / 96.0 - 1.0) > 0.03
    assert abs(float(fit.thickness_nm[0]) / 96.0 - 1.0) < 0.01
    np.testing.assert_array_equal(fit.surface_method.values, [1, 0])
    assert float(fit.thickness_nm[1]) == float(it.thickness_nm[1])
    assert "1 pixels fitted, 0 failed" in capsys.readouterr().out
