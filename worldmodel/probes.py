"""Frozen-feature probes of physical state: linear (ridge on mean-pooled tokens, the classic linear evaluation) and
attentive (learned queries cross-attending over the tokens, as V-JEPA's evaluation pooler).

Features are the L spatial tokens of one time slot [n, L, D]; targets [n, S]; fit on one split, R² per state group
on another. Targets and ridge inputs are standardised with train statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

RIDGE_ALPHAS = np.logspace(-3, 4, 15)


def _standardise(train: np.ndarray, test: np.ndarray):
  mu, sd = train.mean(0), train.std(0) + 1e-6
  return (train - mu) / sd, (test - mu) / sd, (mu, sd)


def ridge_probe(
  x_train, y_train, x_test, y_test, *, holdout: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Closed-form ridge; α chosen on a held-out part of the train split, then refit on all of it.
  Returns (test targets, test predictions), both standardised with the train statistics."""
  x_tr, x_te, _ = _standardise(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
  y_tr, y_te, _ = _standardise(np.asarray(y_train, np.float64), np.asarray(y_test, np.float64))
  perm = np.random.default_rng(seed).permutation(len(x_tr))
  n_val = max(1, int(len(x_tr) * holdout))
  val, fit = perm[:n_val], perm[n_val:]
  best = min(RIDGE_ALPHAS, key=lambda a: np.mean(np.square(x_tr[val] @ _ridge(x_tr[fit], y_tr[fit], a) - y_tr[val])))
  return y_te, x_te @ _ridge(x_tr, y_tr, best)


def _ridge(x, y, alpha):
  n, f = x.shape
  if f <= n:
    return np.linalg.solve(x.T @ x + alpha * np.eye(f), x.T @ y)
  return x.T @ np.linalg.solve(x @ x.T + alpha * np.eye(n), y)  # dual form when features outnumber samples


def _attentive_init(key, D: int, S: int, width: int, heads: int, queries: int) -> dict:
  k = jax.random.split(key, 5)
  glorot = jax.nn.initializers.glorot_uniform()
  return {
    "query": 0.02 * jax.random.normal(k[1], (queries, heads, width // heads)),
    "wk": glorot(k[2], (D, width)),
    "wv": glorot(k[3], (D, width)),
    "head": glorot(k[4], (queries * width, S)),
    "head_b": jnp.zeros(S),
    "ln_scale": jnp.ones(D),
    "ln_bias": jnp.zeros(D),
  }


def _attentive_apply(p: dict, x_nLD: jax.Array, heads: int) -> jax.Array:
  """Each learned query (several, so that they can lock onto different objects) attends over the tokens."""
  mu, var = jnp.mean(x_nLD, -1, keepdims=True), jnp.var(x_nLD, -1, keepdims=True)
  x = (x_nLD - mu) * jax.lax.rsqrt(var + 1e-6) * p["ln_scale"] + p["ln_bias"]
  n, L, _ = x.shape
  k = (x @ p["wk"]).reshape(n, L, heads, -1)
  v = (x @ p["wv"]).reshape(n, L, heads, -1)
  logits = jnp.einsum("qhk,nlhk->nqhl", p["query"], k) / np.sqrt(k.shape[-1])
  pooled = jnp.einsum("nqhl,nlhk->nqhk", jax.nn.softmax(logits, axis=-1), v).reshape(n, -1)
  return jax.nn.gelu(pooled) @ p["head"] + p["head_b"]


def attentive_probe(
  x_train,
  y_train,
  x_test,
  y_test,
  *,
  steps: int = 1500,
  batch: int = 128,
  lr: float = 5e-3,
  width: int = 128,
  heads: int = 4,
  queries: int = 4,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Learned queries attend over the tokens (no position embedding of the probe's own: position must come from the
  features); AdamW, MSE. Returns (test targets, test predictions), standardised with the train statistics."""
  x_tr, x_te = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
  y_tr, y_te, _ = _standardise(np.asarray(y_train, np.float32), np.asarray(y_test, np.float32))
  n, L, D = x_tr.shape
  key = jax.random.key(seed)
  params = _attentive_init(key, D, y_tr.shape[1], width, heads, queries)
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=1e-4)
  idx = np.random.default_rng(seed).integers(0, n, size=(steps, min(batch, n)))

  @jax.jit
  def train(params, x, y, idx):
    def step(carry, i):
      params, opt = carry
      loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.square(_attentive_apply(p, x[i], heads) - y[i])))(params)
      upd, opt = tx.update(g, opt, params)
      return (optax.apply_updates(params, upd), opt), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), idx)
    return params, losses

  params, _ = train(params, jnp.asarray(x_tr), jnp.asarray(y_tr, jnp.float32), jnp.asarray(idx))
  apply = jax.jit(lambda p, x: _attentive_apply(p, x, heads))
  pred = np.concatenate([np.asarray(apply(params, x_te[i : i + 512])) for i in range(0, len(x_te), 512)])
  return y_te, pred


def state_targets(state_NS, groups: dict[str, list[int]], periodic: list[int]):
  """What probes regress: the state with every periodic dimension (an angle that winds past ±π) replaced by its
  sin and cos, appended at the end; groups follow (an angle's group gets both). numpy or jax arrays."""
  if not periodic:
    return state_NS, dict(groups)
  xp = np if isinstance(state_NS, np.ndarray) else jnp
  S = state_NS.shape[-1]
  keep = [i for i in range(S) if i not in periodic]
  angles = state_NS[..., list(periodic)]
  out = xp.concatenate([state_NS[..., keep], xp.sin(angles), xp.cos(angles)], axis=-1)
  where = {i: [keep.index(i)] for i in keep}
  for k, i in enumerate(periodic):
    where[i] = [len(keep) + k, len(keep) + len(periodic) + k]
  return out, {name: sorted(j for i in ids if i < S for j in where[i]) for name, ids in groups.items()}


def r2_by_group(y_NS: np.ndarray, pred_NS: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
  """R² of each named slice of the state, pooled over its dimensions (1 - ΣSSE / ΣSST), so one nearly constant
  dimension cannot dominate a group; dimensions that never vary are skipped. 'all' pools every dimension."""
  y, p = np.asarray(y_NS, np.float64), np.asarray(pred_NS, np.float64)
  sse = np.sum(np.square(y - p), axis=0)
  sst = np.sum(np.square(y - y.mean(0)), axis=0)
  varying = sst > 1e-9 * max(float(sst.max()), 1e-12)
  out = {}
  for name, ids in list(groups.items()) + [("all", list(range(y.shape[1])))]:
    ids = [i for i in ids if i < y.shape[1] and varying[i]]
    if ids:
      out[name] = float(1.0 - sse[ids].sum() / sst[ids].sum())
  return out
