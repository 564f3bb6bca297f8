"""Anti-collapse regularisers shared by the objectives (wm: LeWM / PLDM; jepa: the small-scale SIGReg option); a
helper, not an objective, hence the underscore (objectives/NAME.py files are objectives).

sigreg        LeWM / LeJEPA: Epps–Pulley statistic of random 1-D projections of a set of embeddings against N(0, 1)
vicreg_terms  VICReg: hinge on each dimension's std (>= 1) and the off-diagonal covariance
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SIGREG_KNOTS = 17  # quadrature points on t in [0, SIGREG_T_MAX] (the integrand is even in t)
SIGREG_T_MAX = 3.0


def epps_pulley(x_NM: jax.Array) -> jax.Array:
  """Epps–Pulley statistic of each column of x (N samples of M 1-D variables) against N(0, 1), shape [M]:
  N ∫ |φ_N(t) − e^{−t²/2}|² e^{−t²/2} dt, φ_N the empirical characteristic function (trapezoid rule on [−3, 3]).
  O(1) for standard-normal samples whatever N; grows with N when the distribution differs (e.g. a constant)."""
  t_K = jnp.linspace(0.0, SIGREG_T_MAX, SIGREG_KNOTS)
  dt = SIGREG_T_MAX / (SIGREG_KNOTS - 1)
  trap_K = jnp.full((SIGREG_KNOTS,), dt).at[0].set(dt / 2).at[-1].set(dt / 2)
  weight_K = 2.0 * trap_K * jnp.exp(-0.5 * t_K**2)  # x2: the integral over [-3, 0] equals that over [0, 3]
  tx_NMK = x_NM.astype(jnp.float32)[..., None] * t_K
  err_MK = (jnp.mean(jnp.cos(tx_NMK), 0) - jnp.exp(-0.5 * t_K**2)) ** 2 + jnp.mean(jnp.sin(tx_NMK), 0) ** 2
  return x_NM.shape[0] * (err_MK @ weight_K)


def sigreg(z_GND: jax.Array, rng: jax.Array, projections: int) -> jax.Array:
  """Mean Epps–Pulley statistic over `projections` random unit directions and the G sample sets of N embeddings
  each (wm: one set per time step, over the batch; jepa: one per mask set, over the batch's context tokens)."""
  dirs_DM = jax.random.normal(rng, (z_GND.shape[-1], projections))
  dirs_DM = dirs_DM / jnp.linalg.norm(dirs_DM, axis=0, keepdims=True)
  proj_GNM = jnp.einsum("gnd,dm->gnm", z_GND.astype(jnp.float32), dirs_DM)
  return jnp.mean(jax.vmap(epps_pulley)(proj_GNM))


def vicreg_terms(z_BTD: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(variance hinge, covariance) per time step over the batch, averaged over time (VICReg's definitions)."""
  z = z_BTD.astype(jnp.float32) - jnp.mean(z_BTD.astype(jnp.float32), axis=0)
  B, _, D = z.shape
  std_TD = jnp.sqrt(jnp.mean(z**2, axis=0) * B / max(B - 1, 1) + 1e-4)
  variance = jnp.mean(jax.nn.relu(1.0 - std_TD))
  cov_TDD = jnp.einsum("btd,bte->tde", z, z) / max(B - 1, 1)
  off = cov_TDD * (1.0 - jnp.eye(D))
  return variance, jnp.mean(jnp.sum(off**2, axis=(1, 2)) / D)
