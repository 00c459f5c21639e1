"""The film-fit runner of ``eelsgpu kk --model`` (eelsgpu.cli._film), through its standalone
parser until the merge wires it into ``eelsgpu kk``."""

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
