"""V-JEPA / V-JEPA 2 encoder import: a compact PyTorch reference of the published encoder (written from the
facebookresearch/jepa and vjepa2 code) must give the same features as our VideoViT after import; unsafe or unknown
files are refused; worldmodel workdirs and encoder exports load the same encoder."""

import math
import os
import pathlib
import pickle
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from conftest import experiment_config, run_cli  # noqa: E402

import worldmodel  # noqa: E402
from worldmodel import checkpoint as ckpt_lib  # noqa: E402
from worldmodel import encoders  # noqa: E402
from worldmodel.importers import vjepa  # noqa: E402
from worldmodel.objectives import ac as ac_obj  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
FRAMES, SIZE, TUBELET = 6, 16, (2, 4, 4)
GRID = (3, 4, 4)
VERSIONS = {
  "vjepa": dict(width=100, heads=4, rope=False),  # sin-cos parts of 34: the table is cut from 102 to 100
  # the vjepa2 code's default table (uniform_power=False): time 48 channels, h and w 24 each
  "vjepa_nonuniform": dict(width=96, heads=4, rope=False, uniform=False),
  "vjepa2": dict(width=96, heads=3, rope=True),
}  # vjepa2: head_dim 32: RoPE 10+10+10 and an unrotated tail of 2
POS = {"vjepa": "sincos", "vjepa_nonuniform": "sincos_nonuniform", "vjepa2": "rope"}


def sincos_reference(dim: int, grid_depth: int, grid_size: int, uniform_power: bool = True) -> np.ndarray:
  """jepa / vjepa2's get_3d_sincos_pos_embed (either uniform_power), meshgrid order included."""

  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  grid_h, grid_d, grid_w = np.meshgrid(
    np.arange(grid_size, dtype=float), np.arange(grid_depth, dtype=float), np.arange(grid_size, dtype=float)
  )
  d_dim, h_dim, w_dim = [int(np.ceil(dim / 6) * 2)] * 3 if uniform_power else [dim // 2, dim // 4, dim // 4]
  return np.concatenate([one_d(d_dim, grid_d), one_d(h_dim, grid_h), one_d(w_dim, grid_w)], axis=1)[:, :dim]


def rotate_queries_or_keys(x, pos):
  """vjepa2's function, tiled (`repeat`) frequencies with adjacent-pair rotation kept for checkpoint compatibility."""
  D = x.shape[-1]
  omega = torch.arange(D // 2, dtype=x.dtype) / (D / 2.0)
  freq = torch.einsum("..., f -> ... f", pos, 1.0 / 10000**omega)
  emb_sin, emb_cos = freq.sin().repeat(1, 1, 1, 2), freq.cos().repeat(1, 1, 1, 2)
  y1, y2 = x.unflatten(-1, (-1, 2)).unbind(-1)
  return x * emb_cos + torch.stack((-y2, y1), dim=-1).flatten(-2) * emb_sin


class Attention(nn.Module):
  def __init__(self, dim, heads, rope):
    super().__init__()
    self.heads, self.rope = heads, rope
    self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

  def forward(self, x, ids, grid):
    B, N, C = x.shape
    q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
    if self.rope:  # RoPEAttention: per head [t | h | w | unrotated tail], positions from the token ids
      d = 2 * ((C // self.heads // 3) // 2)
      ids = ids.unsqueeze(1).repeat(1, self.heads, 1)
      pos = (ids // (grid[1] * grid[2]), ids % (grid[1] * grid[2]) // grid[2], ids % grid[2])

      def rotate(x):
        return torch.cat(
          [*(rotate_queries_or_keys(x[..., a * d : (a + 1) * d], pos[a]) for a in range(3)), x[..., 3 * d :]], -1
        )

      q, k = rotate(q), rotate(k)
    x = F.scaled_dot_product_attention(q, k, v)
    return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
  def __init__(self, dim, heads, rope):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, heads, rope)
    self.mlp = nn.Sequential()
    self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

  def forward(self, x, ids, grid):
    x = x + self.attn(self.norm1(x), ids, grid)
    return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
  """V-JEPA's VisionTransformer: PatchEmbed3D, sin-cos pos_embed (V-JEPA) or RoPE (V-JEPA 2), pre-LN blocks, norm."""

  def __init__(self, width, heads, rope, depth=2, uniform_power=True):
    super().__init__()
    self.rope, self.grid = rope, GRID
    self.patch_embed = nn.Module()
    self.patch_embed.proj = nn.Conv3d(3, width, kernel_size=TUBELET, stride=TUBELET)
    if not rope:
      table = sincos_reference(width, self.grid[0], self.grid[1], uniform_power)
      self.pos_embed = nn.Parameter(torch.from_numpy(table).float()[None], requires_grad=False)
    self.blocks = nn.ModuleList([Block(width, heads, rope) for _ in range(depth)])
    self.norm = nn.LayerNorm(width, eps=1e-6)

  def forward(self, x_BCTHW, ids_BK):
    x = self.patch_embed.proj(x_BCTHW).flatten(2).transpose(1, 2)
    if not self.rope:
      x = x + self.pos_embed
    x = torch.gather(x, 1, ids_BK[..., None].expand(-1, -1, x.shape[-1]))  # apply_masks
    for blk in self.blocks:
      x = blk(x, ids_BK, self.grid)
    return self.norm(x)


def random_encoder(version: str, seed: int = 0) -> Encoder:
  torch.manual_seed(seed)
  v = VERSIONS[version]
  model = Encoder(v["width"], v["heads"], v["rope"], uniform_power=v.get("uniform", True))
  with torch.no_grad():  # not the default init: LayerNorms and biases random too, so a swapped tensor shows
    for name, p in model.named_parameters():
      if name == "pos_embed":
        continue
      fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 0
      p.copy_(
        torch.randn_like(p) / math.sqrt(fan_in)
        if fan_in
        else (1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight" else 0.0)
        + 0.3 * torch.randn_like(p)
      )
  return model.eval()


def reference_features(model: Encoder, video_BTHWC: np.ndarray, ids_BK: np.ndarray) -> np.ndarray:
  x = torch.from_numpy(((video_BTHWC - MEAN) / STD).astype(np.float32)).permute(0, 4, 1, 2, 3)
  with torch.no_grad():
    return model(x, torch.from_numpy(ids_BK).long()).numpy()


def save_training_checkpoint(model: Encoder, path: str, version: str) -> str:
  """V-JEPA's training checkpoint layout; its `encoder` (the context encoder) has other weights than the target."""
  wrap = lambda sd: {"module.backbone." + k: v for k, v in sd.items()}  # noqa: E731 - DDP + MultiMaskWrapper
  context = random_encoder(version, seed=99).state_dict()
  torch.save({"encoder": wrap(context), "target_encoder": wrap(model.state_dict()), "epoch": 1, "lr": 1e-3}, path)
  return path


def clip(seed: int = 1, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  video = rng.uniform(size=(batch, FRAMES, SIZE, SIZE, 3)).astype(np.float32)
  n = int(np.prod(GRID))
  ids = np.stack([np.sort(rng.permutation(n)[: n - 7]) for _ in range(batch)])  # a masked subset of the tokens
  return video, ids


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_imported_encoder_matches_pytorch_reference(tmp_path, version):
  ref = random_encoder(version)
  path = save_training_checkpoint(ref, str(tmp_path / "latest.pth.tar"), version)
  sd = vjepa.select_encoder(vjepa.read_torch_state(path))
  info = vjepa.infer_config(sd, heads=VERSIONS[version]["heads"])
  assert (
    info["version"] == version.split("_")[0]
    and info["tubelet"] == TUBELET
    and (info["depth"], info["mlp_ratio"]) == (2, 4.0)
  )
  with pytest.raises(ckpt_lib.CheckpointError, match="no published head count .* pass heads="):
    vjepa.infer_config(sd)  # widths 100 / 96 have no published head count
  model, m = vjepa.load_vjepa_encoder(path, frames=FRAMES, size=SIZE, heads=VERSIONS[version]["heads"])
  assert m.pos == POS[version]
  m2 = encoders.read_encoder_config(path, heads=VERSIONS[version]["heads"])  # what init.heads / encoder_heads pass
  assert m2.encoder.heads == VERSIONS[version]["heads"] and m2.pos == POS[version]
  video, ids = clip()
  want = reference_features(ref, video, ids)
  got = np.asarray(model(video, ids))
  full = np.arange(want.shape[1] + 7)[None].repeat(2, 0)
  got_all, want_all = np.asarray(encoders.encode(model, video)), reference_features(ref, video, full)
  err = max(np.abs(got - want).max(), np.abs(got_all - want_all).max())
  print(f"{version}: max abs feature error {err:.2e}")
  assert err < 1e-4, err
  # key='encoder' reads the context encoder instead: a different model.
  other, _ = vjepa.load_vjepa_encoder(path, frames=FRAMES, size=SIZE, key="encoder", heads=VERSIONS[version]["heads"])
  assert not np.allclose(np.asarray(other(video, ids)), want, atol=1e-2)


def test_vjepa_pos_embed_is_our_sincos_table():
  from worldmodel.models import positions

  for dim, grid in [(100, (3, 4, 4)), (1024, (8, 14, 14)), (1280, (8, 24, 24))]:
    np.testing.assert_allclose(positions.sincos_3d(grid, dim), sincos_reference(dim, grid[0], grid[1]), atol=1e-6)
    assert vjepa._sincos_grid(sincos_reference(dim, grid[0], grid[1]).astype(np.float32)) == grid


def test_scanned_layers_and_default_clip_size(tmp_path):
  ref = random_encoder("vjepa")
  path = save_training_checkpoint(ref, str(tmp_path / "e1.pt"), "vjepa")
  model, m = vjepa.load_vjepa_encoder(path, heads=4, scan_layers=True)
  assert (m.frames, m.size) == (FRAMES, SIZE)  # the checkpoint's own grid, read off its pos_embed
  video, ids = clip()
  np.testing.assert_allclose(np.asarray(model(video, ids)), reference_features(ref, video, ids), atol=1e-4)


def test_safetensors_round_trip(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  ref = random_encoder("vjepa2", seed=3)
  path = str(tmp_path / "encoder.safetensors")
  st.save_file({k: v.numpy() for k, v in ref.state_dict().items()}, path)  # a bare state_dict
  model, _ = vjepa.load_vjepa_encoder(path, frames=FRAMES, size=SIZE, heads=3)
  video, ids = clip()
  np.testing.assert_allclose(np.asarray(model(video, ids)), reference_features(ref, video, ids), atol=1e-4)


class _Payload:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):  # unpickling this would create the marker file
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_never_run(tmp_path):
  marker = str(tmp_path / "pwned")
  path = str(tmp_path / "evil.pt")
  torch.save({"target_encoder": {"x": _Payload(marker)}}, path)
  plain = str(tmp_path / "evil.pth")
  with open(plain, "wb") as f:  # an old-style raw pickle too
    pickle.dump(_Payload(marker), f)
  for p in (path, plain):
    with pytest.raises(ckpt_lib.CheckpointError, match="refusing to load .*evil"):
      vjepa.read_torch_state(p)
  with pytest.raises(ckpt_lib.CheckpointError, match="refusing"):
    encoders.load_encoder(path)
  assert not os.path.exists(marker)


def test_bad_inputs_give_clear_errors(tmp_path):
  bad = tmp_path / "weights.npz"
  bad.write_bytes(b"x")
  with pytest.raises(ckpt_lib.CheckpointError, match=r"supported: .*\.pt.*\.safetensors"):
    vjepa.read_torch_state(str(bad))
  with pytest.raises(ckpt_lib.CheckpointError, match="supported"):
    encoders.load_encoder(str(bad))
  with pytest.raises(ckpt_lib.CheckpointError, match="top-level keys are .*'lr'.*'opt'"):
    vjepa.select_encoder({"opt": {}, "lr": 1.0, "epoch": 3})
  path = save_training_checkpoint(random_encoder("vjepa2"), str(tmp_path / "latest.pt"), "vjepa2")
  _, m = vjepa.load_vjepa_encoder(path, frames=FRAMES, size=SIZE, heads=3)
  m.encoder.width = 48
  mismatch = r"mismatches\): .*attn/qkv/kernel: checkpoint \(96, 288\) vs model \(48, 144\)"
  with pytest.raises(ckpt_lib.CheckpointError, match=mismatch):
    vjepa.encoder_weights(path, m)
  m.encoder.width, m.pos = 96, "sincos"
  with pytest.raises(ckpt_lib.CheckpointError, match="no pos_embed .*to 'rope'"):
    vjepa.encoder_weights(path, m)


def test_workdir_and_export_load_the_same_encoder(tmp_path, dataset, jepa_tiny):
  workdir, out = jepa_tiny, str(tmp_path / "export")
  r = run_cli("worldmodel.encoders", f"--workdir={workdir}", f"--out={out}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.exists(os.path.join(out, "encoder.json"))
  enc_w, m_w = encoders.load_encoder(workdir)
  enc_x, m_x = worldmodel.load_encoder(out)
  assert m_w.to_dict() == m_x.to_dict()
  # an export also serves as the frozen encoder of an action-conditioned run
  ac_config = experiment_config("ac", "tiny")
  ac_config.data.dir, ac_config.model.encoder_source = dataset, out
  ac_obj.resolve_config(ac_config)
  assert ac_config.model.encoder_model.encoder.to_dict() == m_x.encoder.to_dict()
  assert ac_config.model.encoder_model.frames == m_x.tubelet[0] and ac_config.model.size == m_x.size
  _, state = ckpt_lib.read_newest(workdir)
  target = state["extra"]["target_encoder"]["norm"]["scale"]
  np.testing.assert_array_equal(np.asarray(enc_x.norm.scale[...]), target)
  video = np.random.default_rng(0).integers(0, 256, (1, m_w.frames, m_w.size, m_w.size, 3), dtype=np.uint8)
  np.testing.assert_array_equal(np.asarray(encoders.encode(enc_w, video)), np.asarray(encoders.encode(enc_x, video)))
  r = run_cli("worldmodel.encoders", "--workdir=/nonexistent", f"--out={out}")
  assert r.returncode != 0 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_encoder_config_is_read_without_the_weights(tmp_path, jepa_tiny):
  # AC / fine-tune configs take the encoder's architecture at start-up; the weights are read once, at init.
  bare = tmp_path / "config_only"
  bare.mkdir()
  shutil.copy(os.path.join(jepa_tiny, "config.json"), bare / "config.json")
  assert encoders.read_encoder_config(str(bare)).to_dict() == encoders.read_encoder(jepa_tiny)[1].to_dict()
  assert encoders.read_encoder_config(str(bare), frames=2).frames == 2
  with pytest.raises(ckpt_lib.CheckpointError, match="no readable checkpoint"):
    encoders.read_encoder(str(bare))  # the weights are where it fails, with the cause
  with pytest.raises(ckpt_lib.CheckpointError, match="neither a worldmodel workdir"):
    encoders.read_encoder_config(str(tmp_path))
