"""The linear reducer of pretrained presets, on numpy arrays: PCA fitted on the inventory (no labels).

    state = fit_pca(X, code_dim)          # {"reducer.mean", "reducer.components", "reducer.explained_variance"}
    r = Reducer(state); z = r.encode(f)   # (B, C) -> (B, d);  r.error(f): (B,) reconstruction error

Reducer "pseudo-lda" (`fit_pseudo_lda`): the PCA (128-d) is followed by a linear discriminant
projection fitted on pseudo-classes - spherical k-means clusters of the inventory's own PCA codes,
never its labels - stored as "reducer.projection_mean" (p,) and "reducer.projection" (p, d). The
novelty error stays the PCA's reconstruction error.

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
        self.components = np.asarray(state["reducer.components"], np.float32)  # (p, C)
        self.var = np.asarray(state["reducer.explained_variance"], np.float32)  # (p,)
        self.whiten = whiten
        proj = state.get("reducer.projection")  # pseudo-lda: (p, d) after the PCA
        self.projection = None if proj is None else np.asarray(proj, np.float32)
        self.projection_mean = (
            None if proj is None else np.asarray(state["reducer.projection_mean"], np.float32)
        )

    @property
    def code_dim(self) -> int:
        return int(self.components.shape[0] if self.projection is None else self.projection.shape[1])

    def pca(self, f: np.ndarray) -> np.ndarray:
        return (f - self.mean) @ self.components.T  # (B, p)

    def encode(self, f: np.ndarray) -> np.ndarray:
        z = self.pca(f)
        return z if self.projection is None else (z - self.projection_mean) @ self.projection  # (B, d)

    def decode(self, z: np.ndarray) -> np.ndarray:
        comps = self.components * np.sqrt(self.var + 1e-12)[:, None] if self.whiten else self.components
        return z @ comps + self.mean  # (B, C)

    def error(self, f: np.ndarray) -> np.ndarray:
        """Per-row squared reconstruction error (B,) of unit-norm features."""
        return ((self.decode(self.pca(f)) - f) ** 2).sum(1)


def spherical_kmeans(Z: np.ndarray, k: int, iterations: int = 30, seed: int = 0) -> np.ndarray:
    """Cluster ids (N,) of the rows of Z by cosine k-means (random distinct rows as the first centres;
    an emptied cluster keeps its centre). Deterministic for a seed."""
    U = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    centres = U[np.random.default_rng(seed).choice(len(U), k, replace=False)].copy()
    assign = np.zeros(len(U), np.int64)
    for _ in range(iterations):
        assign = np.argmax(U @ centres.T, 1)
        for j in range(k):
            members = U[assign == j]
            if len(members):
                c = members.mean(0)
                centres[j] = c / max(float(np.linalg.norm(c)), 1e-12)
    return assign


def fit_pseudo_lda(
    Z: np.ndarray, n_classes: int, code_dim: int, seed: int = 0, reg: float = 1e-3
) -> dict[str, np.ndarray]:
    """A discriminant projection of the PCA codes Z (N, p) to `code_dim`, on pseudo-classes.

    The classes are `n_classes` spherical k-means clusters of Z (no labels). The directions maximise
    between-cluster over within-cluster scatter (Sw regularised by `reg` times its mean variance),
    each scaled to unit length (measured: docs/quality.md, third pass).
    """
    if not 2 <= n_classes <= len(Z):
        raise ValueError(f"pseudo-lda needs 2 to {len(Z)} pseudo-classes, got {n_classes}")
    if code_dim > min(n_classes - 1, Z.shape[1]):
        raise ValueError(f"pseudo-lda: code_dim {code_dim} exceeds min(classes - 1, input dims)")
    Z = np.asarray(Z, np.float64)
    assign = spherical_kmeans(Z, n_classes, seed=seed)
    mu = Z.mean(0)
    p = Z.shape[1]
    Sw, Sb = np.zeros((p, p)), np.zeros((p, p))
    for j in np.unique(assign):
        members = Z[assign == j]
        c = members.mean(0)
        Sw += (members - c).T @ (members - c)
        Sb += len(members) * np.outer(c - mu, c - mu)
    Sw += reg * np.trace(Sw) / p * np.eye(p)
    L = np.linalg.cholesky(Sw)  # Sw = L L^T: the generalised problem as a symmetric one
    Linv = np.linalg.inv(L)
    vals, vecs = np.linalg.eigh(Linv @ Sb @ Linv.T)
    W = Linv.T @ vecs[:, np.argsort(-vals)[:code_dim]]  # (p, d)
    W /= np.linalg.norm(W, axis=0, keepdims=True)
    return {"reducer.projection_mean": mu.astype(np.float32), "reducer.projection": W.astype(np.float32)}


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
