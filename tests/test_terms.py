"""stackvi.terms: align, the Terms algebra, site_log_prob (plates, mask, scale, subsampling).

Everything here is exact: results are compared with NumPy references, jitted and eager.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpyro.handlers import mask, scale, seed, substitute, trace

from stackvi.terms import Term, Terms, align, site_log_prob

MODES = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def maybe_jit(fn, jit):
    return jax.jit(fn) if jit else fn


# --------------------------------------------------------------------------- align


def align_reference(array, names, target):
    """einsum-free NumPy reference: sum dropped axes, permute, insert size-1 axes."""
    a = np.asarray(array)
    drop = tuple(i for i, n in enumerate(names) if n not in target)
    a = a.sum(axis=drop) if drop else a
    kept = [n for n in names if n in target]
    a = np.transpose(a, [kept.index(n) for n in target if n in kept])
    shape, it = [], iter(a.shape)
    for n in target:
        shape.append(next(it) if n in kept else 1)
    return a.reshape(shape)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    perm_seed=st.integers(0, 10_000),
    extra=st.booleans(),
)
def test_align_matches_reference(sizes, perm_seed, extra):
    rng = np.random.default_rng(perm_seed)
    names = tuple(f"a{i}" for i in range(len(sizes)))
    array = rng.normal(size=sizes).astype(np.float32)
    keep = [n for n in names if rng.random() < 0.6]
    target = list(rng.permutation(keep)) if keep else []
    if extra:  # an axis the array lacks must broadcast (size 1)
        target.insert(int(rng.integers(0, len(target) + 1)), "missing")
    target = tuple(str(t) for t in target)
    expected = align_reference(array, names, target)
    for fn in (align, jax.jit(align, static_argnums=(1, 2))):
        got = np.asarray(fn(jnp.asarray(array), names, target))
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_align_exact_cases():
    a = jnp.arange(6.0).reshape(2, 3)
    names = ("p", "d")
    assert align(a, names, ("d",)).tolist() == [3.0, 5.0, 7.0]
    assert align(a, names, ("p",)).tolist() == [3.0, 12.0]
    assert align(a, names, ("d", "p")).tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    assert align(a, names, ()).tolist() == 15.0
    assert align(a, names, ("p", "q", "d")).shape == (2, 1, 3)


# --------------------------------------------------------------------------- Terms algebra


def _terms():
    return Terms((
        Term("g", jnp.array([1.0, 2.0]), ("particles",)),
        Term("l", jnp.arange(6.0).reshape(2, 3), ("particles", "data")),
    ))


@MODES
def test_terms_linear_algebra(jit):
    t = _terms()

    def ops(t):
        return {
            "total": t.total(),
            "sum": (t + t).total(),
            "neg": (-t).total(),
            "sub": (t - t).total(),
            "mul": (t * 2.0).total(),
            "rmul": (0.5 * t).total(),
            "mean": t.mean("particles").total(),
            "per_p": t.per(("particles",)),
            "per_pd": t.per(("particles", "data")),
            "per_d": t.per(("data",)),
        }

    got = maybe_jit(ops, jit)(t)
    assert float(got["total"]) == 18.0
    assert float(got["sum"]) == 36.0
    assert float(got["neg"]) == -18.0
    assert float(got["sub"]) == 0.0
    assert float(got["mul"]) == 36.0
    assert float(got["rmul"]) == 9.0
    assert float(got["mean"]) == 9.0  # both terms have 2 particles
    np.testing.assert_array_equal(got["per_p"], [1.0 + 3.0, 2.0 + 12.0])
    np.testing.assert_array_equal(got["per_pd"], [[1, 2, 3], [5, 6, 7]])
    np.testing.assert_array_equal(got["per_d"], [3 + 3, 3 + 5, 3 + 7])


def test_terms_structure():
    t = _terms()
    assert t.labels() == ["g", "l"]
    assert t["l"].names == ("particles", "data")
    with pytest.raises(KeyError):
        t["nope"]
    w = t.with_axis("outer")
    assert [x.names for x in w.terms] == [("outer", "particles"), ("outer", "particles", "data")]
    # labels survive the algebra, values flip sign
    assert (t - t).labels() == ["g", "l", "g", "l"]
    assert t.__add__(1.0) is NotImplemented
    assert Terms().total().shape == ()


def test_terms_mean_missing_axis_names_the_term():
    with pytest.raises(ValueError, match="term 'g' has no axis named 'data'"):
        _terms().mean("data")


def test_terms_are_pytrees_through_jit_and_vmap():
    t = _terms()
    out = jax.jit(lambda t: t * 3.0)(t)
    assert isinstance(out, Terms) and out.labels() == t.labels()
    assert [x.names for x in out.terms] == [x.names for x in t.terms]
    stacked = jax.vmap(lambda c: t * c)(jnp.arange(4.0))
    assert stacked.terms[1].array.shape == (4, 2, 3)


# --------------------------------------------------------------------------- site_log_prob


def _site(model, name, *args, subs=None):
    model = substitute(model, subs) if subs else model
    return trace(seed(model, 0)).get_trace(*args)[name]


def nested_model():
    with numpyro.plate("a", 3, dim=-1), numpyro.plate("b", 2, dim=-2):
        numpyro.sample("z", dist.Normal(0.0, 1.0))
    with numpyro.plate("a2", 3):
        numpyro.sample("e", dist.Normal(jnp.zeros((3, 4)), 1.0).to_event(1))
    numpyro.sample("free", dist.Normal(jnp.zeros(5), 1.0))  # batch dims outside plates


def test_site_log_prob_names_plate_axes():
    tr = trace(seed(nested_model, 0)).get_trace()
    z, e, free = (site_log_prob(tr[n]) for n in ("z", "e", "free"))
    assert z.names == ("b", "a") and z.array.shape == (2, 3)
    np.testing.assert_allclose(z.array, dist.Normal(0.0, 1.0).log_prob(tr["z"]["value"]),
                               rtol=1e-6)
    assert e.names == ("a2",) and e.array.shape == (3,)
    np.testing.assert_allclose(e.array, dist.Normal(0.0, 1.0).log_prob(tr["e"]["value"]).sum(-1),
                               rtol=1e-6)
    # batch axes that no plate declares are not independent: summed out
    assert free.names == () and free.array.shape == ()
    np.testing.assert_allclose(free.array,
                               dist.Normal(0.0, 1.0).log_prob(tr["free"]["value"]).sum(),
                               rtol=1e-6)
    assert site_log_prob(tr["z"], label="q:z").label == "q:z"


@MODES
def test_site_log_prob_jitted_equals_eager(jit):
    def lp(v, loc):
        def model():
            with numpyro.plate("a", 3, dim=-1), numpyro.plate("b", 2, dim=-2):
                numpyro.sample("z", dist.Normal(loc, 1.0))

        term = site_log_prob(trace(substitute(model, {"z": v})).get_trace()["z"])
        return term.array

    v = jnp.linspace(-1, 1, 6).reshape(2, 3)
    np.testing.assert_allclose(maybe_jit(lp, jit)(v, 0.5), dist.Normal(0.5, 1.0).log_prob(v),
                               rtol=1e-6)


def test_site_log_prob_mask_and_scale():
    m = jnp.array([True, False, True, True])
    x = jnp.array([0.1, 0.2, 0.3, 0.4])

    def model():
        with numpyro.plate("data", 4), mask(mask=m), scale(scale=2.5):
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    site = _site(model, "x")
    ref = np.where(np.asarray(m), np.asarray(dist.Normal(0.0, 1.0).log_prob(x)), 0.0)
    np.testing.assert_allclose(site_log_prob(site).array, 2.5 * ref, rtol=1e-6)
    np.testing.assert_allclose(site_log_prob(site, apply_scale=False).array, ref, rtol=1e-6)


def test_site_log_prob_subsampling_scales_to_full_data():
    x = jnp.arange(10.0)

    def model():
        with numpyro.plate("data", 10, subsample_size=4) as idx:
            numpyro.sample("x", dist.Normal(0.0, 3.0), obs=x[idx])
        return idx

    tr = trace(seed(model, 3)).get_trace()
    idx = tr["data"]["value"]
    term = site_log_prob(tr["x"])
    assert term.names == ("data",) and term.array.shape == (4,)
    np.testing.assert_allclose(term.array, 2.5 * dist.Normal(0.0, 3.0).log_prob(x[idx]),
                               rtol=1e-6)


def test_sequential_plates_at_the_same_dim_are_kept_apart():
    xa, xb = jnp.array([1.0, 2.0, 3.0]), jnp.array([-1.0, 0.0, 4.0])

    def model():
        with numpyro.plate("a", 3):
            numpyro.sample("xa", dist.Normal(0.0, 1.0), obs=xa)
        with numpyro.plate("b", 3):
            numpyro.sample("xb", dist.Normal(0.0, 2.0), obs=xb)

    tr = trace(model).get_trace()
    ta, tb = site_log_prob(tr["xa"]), site_log_prob(tr["xb"])
    assert ta.names == ("a",) and tb.names == ("b",)
    la, lb = dist.Normal(0.0, 1.0).log_prob(xa), dist.Normal(0.0, 2.0).log_prob(xb)
    terms = Terms((ta, tb))
    # per element of "a": its own element plus all of "b" (summed), never b's element i
    np.testing.assert_allclose(terms.per(("a",)), la + lb.sum(), rtol=1e-6)
    np.testing.assert_allclose(terms.per(("a", "b")), la[:, None] + lb[None, :], rtol=1e-6)


def test_size_one_plate_axis_is_kept():
    def model():
        with numpyro.plate("one", 1):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

    term = site_log_prob(_site(model, "z"))
    assert term.names == ("one",) and term.array.shape == (1,)


@pytest.mark.parametrize("dims", list(itertools.permutations([-1, -2])))
def test_plate_dims_in_either_order(dims):
    def model():
        with numpyro.plate("p", 2, dim=dims[0]), numpyro.plate("q", 3, dim=dims[1]):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

    site = _site(model, "z")
    term = site_log_prob(site)
    by_dim = {dims[0]: "p", dims[1]: "q"}
    assert term.names == (by_dim[-2], by_dim[-1])
    np.testing.assert_allclose(term.array, dist.Normal(0.0, 1.0).log_prob(site["value"]),
                               rtol=1e-6)
