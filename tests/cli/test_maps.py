"""`eelsgpu maps` end to end on a synthetic SXES image."""

from __future__ import annotations


def test_maps_cli_on_sxes_image(tmp_path, capsys):
    """Truth: the synthetic SXES image's region labels (its Na-doped disk has the higher B-K band
    top) and the grating equation (O-K 3rd order in the B-K window -> a warning)."""
    from eelsgpu import io
    from eelsgpu.cli import main
    from eelsgpu.synthetic import sxes_image

    ds = sxes_image((12, 12), "disk", seed=1)
    io.write_store(ds[["signal", "true_region"]], tmp_path / "sx.zarr")
    rc = main(
        [
            "maps",
            str(tmp_path / "sx.zarr"),
            "-o",
            str(tmp_path / "m.zarr"),
            "--window",
            "BK=170:188",
            "--window",
            "top=187:188",
            "--background",
            "top=160:168",
            "--background",
            "top=192:198",
            "--background-model",
            "linear",
            "--elements",
            "B,O",
            "--ratio",
            "top/BK",
            "--peak",
            "BK",
            "--png-dir",
            str(tmp_path / "png"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "O Ka (524.9 eV) in order 3 at 175.0 eV" in err
    res = io.open_store(tmp_path / "m.zarr")
    truth = ds["true_region"].values == 1
    top = res["top"].values
    assert top[truth].min() > top[~truth].max() * 0.9 and top[truth].mean() > 2 * top[~truth].mean()
    assert res["top"].attrs["units"] == "counts"
    assert (tmp_path / "png" / "top_over_BK.png").stat().st_size > 1000
    assert (
        main(
            [
                "maps",
                str(tmp_path / "sx.zarr"),
                "-o",
                str(tmp_path / "bad.zarr"),
                "--window",
                "X=500:600",
                "--quiet",
            ]
        )
        == 2
    )
