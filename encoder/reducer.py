"""The linear reducer of pretrained presets, on numpy arrays: PCA fitted on the inventory (no labels).

    state = fit_pca(X, code_dim)          # {"reducer.mean", "reducer.components", "reducer.explained_variance"}
    r = Reducer(state); z = r.encode(f)   # (B, C) -> (B, d);  r.error(f): (B,) reconstruction error

`cross_fitted_errors` gives each image's error under a reducer fitted without it: the novelty reference.
"""

from __future__ import annotations

import numpy as np

NOVELTY_FOLDS = 5  # cross-fitting folds for the novelty reference


def fit_pca(X: np.ndarray, code_dim: int, whiten: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """PCA of the rows of X (no labels): mean (C,), components (code_dim, C), explained variance.

    The top `code_dim` components by randomised SVD (Halko et al. 2011: a Gaussian sketch with 16 extra
    columns, 4 power iterations): a few matrix products instead of a full SVD, the same components to
    ~1e-4 for the fast-decaying spectra of pooled CNN features, and 100x+ faster on a busy 2-core machine
    (a full SVD of 3,068 x 2,560 took minutes there; this takes under a second).
    """
    if code_dim > min(X.shape):
        raise ValueError(f"code_dim {code_dim} exceeds min(n_images, n_features) = {min(X.shape)}")
    X = np.asarray(X, np.float64)
    mean = X.mean(0)
    Xc = X - mean  # (N, C)
    k = min(code_dim + 16, *Xc.shape)
    if k >= min(Xc.shape) // 2:  # small problems: the exact SVD is cheap
        _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    else:
        Q = np.linalg.qr(Xc @ np.random.default_rng(seed).standard_normal((Xc.shape[1], k)))[0]  # (N, k)
        for _ in range(4):  # power iterations sharpen the spectrum's separation
            Q = np.linalg.qr(Xc @ (Xc.T @ Q))[0]
        _, s, vt = np.linalg.svd(Q.T @ Xc, full_matrices=False)  # (k, C)
    var = s**2 / max(1, len(X) - 1)
    comps = vt[:code_dim]
    if whiten:
        comps = comps / np.sqrt(var[:code_dim, None] + 1e-12)
    return {
        "reducer.mean": mean.astype(np.float32),
        "reducer.components": np.ascontiguousarray(comps, np.float32),
        "reducer.explained_variance": var[:code_dim].astype(np.float32),
    }


class Reducer:
    """Linear encoder/decoder of a fitted PCA: `encode` (B, C) -> (B, d), `decode` back."""

    def __init__(self, state: dict[str, np.ndarray], whiten: bool = False):
        self.mean = np.asarray(state["reducer.mean"], np.float32)  # (C,)
        self.components = np.asarray(state["reducer.components"], np.float32)  # (d, C)
        self.var = np.asarray(state["reducer.explained_variance"], np.float32)  # (d,)
        self.whiten = whiten

    @property
    def code_dim(self) -> int:
        return int(self.components.shape[0])

    def encode(self, f: np.ndarray) -> np.ndarray:
        return (f - self.mean) @ self.components.T  # (B, d)

    def decode(self, z: np.ndarray) -> np.ndarray:
        comps = self.components * np.sqrt(self.var + 1e-12)[:, None] if self.whiten else self.components
        return z @ comps + self.mean  # (B, C)

    def error(self, f: np.ndarray) -> np.ndarray:
        """Per-row squared reconstruction error (B,) of unit-norm features."""
        return ((self.decode(self.encode(f)) - f) ** 2).sum(1)


def cross_fitted_errors(X: np.ndarray, order: np.ndarray, n_components: int, whiten: bool) -> np.ndarray:
    """Each image's reconstruction error under a reducer fitted without it (K folds).

    The novelty reference must hold errors of images the reducer has not seen, as a query is:
    in-sample errors are smaller, and would make every query look novel.
    """
    errors = np.zeros(len(X), np.float32)
    for fold in np.array_split(order, NOVELTY_FOLDS):
        rest = np.setdiff1d(order, fold)
        reducer = Reducer(fit_pca(X[rest], n_components, whiten), whiten)
        errors[fold] = reducer.error(X[fold])
    return errors
