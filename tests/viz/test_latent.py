"""sdlearn.viz.latent: the latent trajectory viewers and the cost plot, with a tiny random VAE and UNet."""

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure

from sdlearn.viz import latent as latent_viz
from sdlearn.pipelines import LatentDiffusionPipeline
from sdlearn.schedulers import DDIMScheduler
from sdlearn.models.unet_2d import UNet2DModel, UNetConfig
from sdlearn.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from sdlearn.viz.diffusion import TrajectoryRecorder
from sdlearn.evaluation.pixel_vs_latent import markdown_table, unet_config

VAE_CFG = AutoencoderKLConfig.with_factor(4, (8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4,
                                          sample_size=16, scaling_factor=0.5)
UNET_CFG = UNetConfig(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                      attention_head_dim=8, norm_num_groups=4)
STEPS = 6


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return LatentDiffusionPipeline(AutoencoderKL(VAE_CFG).eval(), UNet2DModel(UNET_CFG).eval(),
                                   DDIMScheduler(num_train_timesteps=100))


@pytest.fixture(scope="module")
def recorder(pipe):
    rec = TrajectoryRecorder(num_keep=3)
    pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="latent",
         callback_on_step_end=rec, progress=False)
    return rec


def closed_in_pyplot(fig) -> bool:
    return isinstance(fig, Figure) and fig.number not in plt.get_fignums()


def test_decode_trajectory_decodes_the_chosen_sample(pipe, recorder):
    frames = latent_viz.decode_trajectory(recorder, pipe, sample=1)
    assert len(frames) == 3 and frames.steps == [0, 2, 5]
    assert frames.z_t.shape == frames.x0_pred.shape == (3, 4, 4, 4)
    assert frames.z_t_decoded.shape == frames.x0_pred_decoded.shape == (3, 3, 16, 16)
    torch.testing.assert_close(frames.z_t[1], recorder.frames[1]["x_t"][1])
    # decoding divides by the scaling factor first: D(z / 0.5)
    with torch.no_grad():
        want = pipe.vae.decode(recorder.frames[2]["x0_pred"][1:2] / 0.5).sample.clamp(-1, 1)
    torch.testing.assert_close(frames.x0_pred_decoded[2:3], want, atol=1e-5, rtol=0)
    assert latent_viz.decode_trajectory(frames, pipe) is frames  # already decoded: passed through


@pytest.mark.parametrize("view", ["channels", "pca"])
def test_plot_latent_trajectory_has_four_rows_per_kept_step(pipe, recorder, view):
    fig = latent_viz.plot_latent_trajectory(recorder, pipe, sample=0, view=view)
    assert closed_in_pyplot(fig)
    assert len(fig.axes) == 4 * 3
    assert fig.axes[0].get_title() == "i=0, t=" + str(recorder.frames[0]["t"])
    fig.savefig(Path("/dev/null"), format="png")  # draws without error on any backend


def test_channel_tile_uses_a_fixed_scale():
    z = torch.zeros(4, 2, 2)
    z[0] = 3.0  # +3 standard deviations: white
    z[1] = -3.0  # black
    tile = latent_viz._channel_tile(z, 4)  # 2 x 2 channels of 2 x 2 with 1-pixel padding
    assert tile.shape == (7, 7, 1)
    assert tile[1, 1, 0] == pytest.approx(1.0) and tile[1, 4, 0] == pytest.approx(0.0)
    assert tile[4, 1, 0] == pytest.approx(0.5)  # 0 is mid grey
    assert latent_viz._channel_tile(z, 1).shape == (2 + 2, 2 + 2, 1)  # the first channel only


def test_plot_latent_step_and_slider(pipe, recorder):
    fig = latent_viz.plot_latent_step(recorder, pipe, index=-1)
    assert closed_in_pyplot(fig) and len(fig.axes) == 4
    assert "t = " + str(recorder.frames[-1]["t"]) in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="out of range"):
        latent_viz.plot_latent_step(recorder, pipe, index=3)

    widget = latent_viz.latent_step_slider(recorder, pipe)
    slider, image = widget.children
    assert (slider.min, slider.max, slider.value) == (0, 2, 0)
    first = image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    slider.value = 2
    assert image.value != first


def test_clear_errors(pipe, recorder):
    with pytest.raises(ValueError, match="no frames"):
        latent_viz.plot_latent_trajectory(TrajectoryRecorder(), pipe)
    with pytest.raises(ValueError, match="out of range"):
        latent_viz.plot_latent_trajectory(recorder, pipe, sample=2)
    with pytest.raises(ValueError, match="view must be"):
        latent_viz.plot_latent_trajectory(recorder, pipe, view="rgb")


def fake_results(cuda: bool = False, quality: bool = True) -> dict:
    arms = {}
    for arm, shape, step, enc, sample, mem in (("pixel", [3, 64, 64], 0.8, None, 20.0, 900),
                                               ("latent f=4", [4, 16, 16], 0.1, 0.2, 3.0, 700),
                                               ("latent f=8", [4, 8, 8], 0.05, 0.15, 2.0, 650)):
        e = {"input_shape": shape, "unet_parameters": 1000, "train_step_seconds": step,
             "sample_seconds": sample, "sample_what": "50 DDIM steps of 16 images, decoding included"}
        e["cuda_peak_bytes" if cuda else "maxrss_bytes"] = mem * 2**20
        if cuda:
            e["maxrss_bytes"] = 2000 * 2**20
        if enc is not None:
            e["train_step_seconds_with_encoding"] = enc
            e["step_ratio_cached"], e["step_ratio_with_encoding"] = 0.8 / step, 0.8 / enc
        if quality:
            e["quality"] = {"well_formed_share": 0.5 if arm == "pixel" else 0.9, "train_steps_in_budget": 100,
                            "missing_colours": [], "missing_shapes": []}
        arms[arm] = e
    return {"device": "cuda" if cuda else "cpu", "machine": "test", "torch_threads": 2, "batch": 32,
            "budget_seconds": 600.0, "baseline_maxrss_bytes": 400 * 2**20, "arms": arms, "command": "test"}


@pytest.mark.parametrize("cuda,quality", [(False, True), (True, True), (False, False)])
def test_plot_cost_table(cuda, quality):
    fig = latent_viz.plot_cost_table(fake_results(cuda, quality))
    assert closed_in_pyplot(fig) and len(fig.axes) == 4
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0] == "pixel\n3x64x64\n12,288 values" and labels[1].endswith("1,024 values")
    assert ("CUDA" in fig.axes[2].get_title()) == cuda
    with pytest.raises(ValueError, match="arms"):
        latent_viz.plot_cost_table({"arms": {}})


def test_the_benchmarks_markdown_table_reads_the_same_results():
    """The chapter shows the table with the package's markdown_table, the one the benchmark script writes."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "pixel_vs_latent.py"
    spec = importlib.util.spec_from_file_location("pixel_vs_latent", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.markdown_table is markdown_table and module.unet_config is unet_config
    table = markdown_table(fake_results())
    assert "| latent f=4 | 4x16x16 |" in table and "8.0x cached" in table
