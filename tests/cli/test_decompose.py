"""`eelsgpu decompose` end to end on a synthetic three-spectrum mixture."""

from __future__ import annotations


def test_decompose_cli(mixture_image, tmp_path):
    """Truth: the 3-spectrum mixture (3 components above the noise on the stored scree)."""
    from eelsgpu import io
    from eelsgpu.cli import main

    io.write_store(mixture_image[0].to_dataset(name="signal"), tmp_path / "mix.zarr")
    rc = main(
        [
            "decompose",
            str(tmp_path / "mix.zarr"),
            "-o",
            str(tmp_path / "pca.zarr"),
            "--method",
            "pca",
            "-n",
            "3",
            "--denoise",
            "--png-dir",
            str(tmp_path / "png"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    res = io.open_store(tmp_path / "pca.zarr")
    ev = res["explained_variance_ratio"].values
    assert ev[2] > 20 * ev[3]
    assert res["denoised"].dims == ("y", "x", "energy")
    assert (tmp_path / "png" / "scree.png").exists()
