import pytest

from harness import PRESIDIO_MISSING, PRESIDIO_PYTHON, ControlPlane, MockPool, Postgres, PresidioService, Sidecar, pool


@pytest.fixture
def mocks():
    """Factory of mock pools, all stopped at teardown."""
    started = []

    def start(name="gpu", models=("mistral-7b",), **flags):
        m = MockPool(name, list(models), **flags)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


@pytest.fixture
def sidecars():
    started = []

    def start(policy, **kwargs):
        s = Sidecar(policy, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def presidio():
    """Factory of real Presidio analyzers (PresidioService), all stopped at teardown.

    Fails, never skips, without target/presidio-venv: these tests need the real analyzer.
    """
    if not PRESIDIO_PYTHON.exists():
        pytest.fail(PRESIDIO_MISSING, pytrace=False)
    started = []

    def start(delay_ms=0, mode="normal", **kwargs):
        p = PresidioService(delay_ms=delay_ms, mode=mode, **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def simple_policy(*mocks, models=None, name="e2e", **pool_extra):
    """One pool over the given mocks serving mistral-7b, also known as gpt-4o-mini."""
    models = models or [{"name": "mistral-7b", "aliases": ["gpt-4o-mini"]}]
    return {"name": name, "pools": [pool("gpu-a", [m.url for m in mocks], models, **pool_extra)]}


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    """Both storage backends run the same tests: None = embedded SQLite file."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def control_planes():
    started = []

    def start(**kwargs):
        cp = ControlPlane(**kwargs)
        started.append(cp)
        return cp

    yield start
    for cp in started:
        cp.stop()
