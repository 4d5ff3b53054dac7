"""mlflow/prepare_db.py against a real PostgreSQL that the tests start themselves.

The cluster (tests/postgres_server.py) runs Debian's `postgresql` binaries in a
temp dir. Without them the tests skip, and fail instead when REQUIRE_POSTGRES=1
or CI is set: CI must not pass by skipping them.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib.util
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from tests.postgres_server import PostgresServer, PostgresUnavailableError, running_postgres, shared_server
from tools.stack_config import PROJECT_DIR

pytestmark = pytest.mark.postgres

# Set by `make mutation` with the shared server: a database of the current schema,
# made by the unmutated prepare_db.py (a mutant must not build the template it is tested on).
TEMPLATE_ENV = "TEST_POSTGRES_TEMPLATE"


def _load_prepare_db() -> ModuleType:
    # mlflow/ is not a package (and `mlflow` is MLflow's own name): load the file itself, not
    # entered in sys.modules. Its functions' __module__ is then "mlflow.prepare_db", the name
    # mutmut gives this file's mutants.
    spec = importlib.util.spec_from_file_location("mlflow.prepare_db", PROJECT_DIR / "mlflow" / "prepare_db.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_db = _load_prepare_db()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    shared = shared_server()
    if shared is not None:
        yield shared
        return
    required = os.environ.get("REQUIRE_POSTGRES") == "1" or bool(os.environ.get("CI"))
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailableError as error:
        if required:
            pytest.fail(f"REQUIRE_POSTGRES=1 (or CI) but {error}")
        pytest.skip(str(error))


def _admin(server: PostgresServer) -> sqlalchemy.Engine:
    return sqlalchemy.create_engine(server.uri("postgres"), isolation_level="AUTOCOMMIT")


def _new_database(server: PostgresServer, template: str = "template0") -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = _admin(server)
    for attempt in range(20):
        try:
            with admin.connect() as connection:
                # A copy needs the template to itself: MLflow's engines may still hold pooled connections.
                connection.execute(
                    sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": template},
                )
                connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
            break
        except sqlalchemy.exc.OperationalError as error:
            # Another test copying the same template at this moment (`make mutation` runs two).
            if "is being accessed by other users" not in str(error) or attempt == 19:
                raise
            time.sleep(0.5)
    yield server.uri(name)
    with admin.connect() as connection:
        for database in (name, f"{name}_auth"):
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database(postgres: PostgresServer) -> Iterator[str]:
    """A new, empty database per test; its URI, percent-encoded as the entrypoint builds it."""
    yield from _new_database(postgres)


@pytest.fixture(scope="session")
def current_schema_template(postgres: PostgresServer) -> Iterator[str]:
    """A database with the current schema, made once: creating it takes seconds, copying it does not."""
    if os.environ.get(TEMPLATE_ENV):
        yield os.environ[TEMPLATE_ENV]
        return
    for uri in _new_database(postgres):
        prepare_db._prepare_tracking_schema(uri)
        yield uri.rsplit("/", 1)[1]


@pytest.fixture
def current_database(postgres: PostgresServer, current_schema_template: str) -> Iterator[str]:
    """A new database whose tracking schema is already current (a restart, not a first start)."""
    yield from _new_database(postgres, current_schema_template)


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    def run(uri: str, auth_config: Path | None = None, admin_password: str | None = None, **env: str) -> None:
        monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", uri)
        # The admin password reaches prepare_db as a file, as the container uploads it.
        monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
        if admin_password is not None:
            secret = tmp_path / "admin-password"
            secret.write_text(admin_password + "\n", encoding="utf-8")
            monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD_FILE", str(secret))
        if auth_config is None:
            monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(auth_config))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        prepare_db.main()

    return run


def _scalar(uri: str, sql: str) -> object:
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(sql)).scalar()
    finally:
        engine.dispose()


def _migrations() -> ScriptDirectory:
    import mlflow.store.db_migrations as migrations

    return ScriptDirectory(str(Path(migrations.__file__).parent))


def _head() -> str:
    head = _migrations().get_current_head()
    assert head
    return head


def test_a_fresh_database_gets_the_current_schema_and_the_default_experiment(
    database: str, run_main: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    run_main(database)
    assert _scalar(database, "SELECT version_num FROM alembic_version") == _head()
    # The Default experiment records where `--serve-artifacts` puts its runs.
    assert _scalar(database, "SELECT artifact_location FROM experiments WHERE experiment_id = 0") == (
        "mlflow-artifacts:/0"
    )
    assert "upgrading" not in capsys.readouterr().err
    # No auth config asked for: no auth database.
    assert not _database_exists(database, "_auth")


def _database_exists(uri: str, suffix: str) -> bool:
    name = uri.rsplit("/", 1)[1] + suffix
    admin = uri.rsplit("/", 1)[0] + "/postgres"
    engine = sqlalchemy.create_engine(admin)
    try:
        with engine.connect() as connection:
            query = sqlalchemy.text("SELECT count(*) FROM pg_database WHERE datname = :name")
            return bool(connection.execute(query, {"name": name}).scalar())
    finally:
        engine.dispose()


def _make_older_schema(database: str) -> str:
    """Three revisions behind head, as an older MLflow release left it, holding one experiment."""
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    script = _migrations()
    older = _head()
    for _ in range(3):
        down = script.get_revision(older).down_revision
        assert isinstance(down, str)
        older = down
    engine = sqlalchemy.create_engine(database)
    # How MLflow itself starts a database: the initial tables, then the migrations.
    InitialBase.metadata.create_all(engine)
    with engine.begin() as connection:
        config = _get_alembic_config(database)  # type: ignore[no-untyped-call]  # mlflow ships no types
        config.attributes["connection"] = connection
        command.upgrade(config, older)
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                "VALUES (7, 'kept', 'mlflow-artifacts:/7', 'active')"
            )
        )
    engine.dispose()
    assert _scalar(database, "SELECT version_num FROM alembic_version") == older
    return older


def test_an_older_schema_is_upgraded_and_keeps_its_data(
    database: str, run_main: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    _make_older_schema(database)
    run_main(database)
    assert "prepare_db: upgrading the tracking schema" in capsys.readouterr().err.splitlines()
    assert _scalar(database, "SELECT version_num FROM alembic_version") == _head()
    assert _scalar(database, "SELECT name FROM experiments WHERE experiment_id = 7") == "kept"


@contextlib.contextmanager
def _backup_container(database: str, answer: str | None, delay: float = 0.0) -> Iterator[list[str]]:
    """Plays mlflow/backup/mlflow-backup's side: waits for the request session, then NOTIFYs `answer`
    after `delay` seconds (a backup takes time).

    Yields the application names it saw asking; `answer` None never answers (a stopped container).
    """
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        engine = sqlalchemy.create_engine(database, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                while not stop.wait(0.1):
                    asking = connection.execute(
                        sqlalchemy.text(
                            "SELECT application_name FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name = 'mlflow-backup-request'"
                        )
                    ).scalar()
                    if asking is None:
                        continue
                    seen.append(str(asking))
                    time.sleep(delay)
                    if answer is not None:
                        connection.execute(sqlalchemy.text(f"NOTIFY mlflow_backup, '{answer}'"))
                    return
        finally:
            engine.dispose()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=10)


def test_an_upgrade_waits_for_a_backup_and_logs_its_id(
    database: str, run_main: Callable[..., None], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_older_schema(database)
    # The default wait (300 s) applies: MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT is not set.
    monkeypatch.delenv("MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT", raising=False)
    with _backup_container(database, "20261127T120000Z") as seen:
        run_main(database, MLFLOW_PRE_UPGRADE_BACKUP="true")
    assert seen == ["mlflow-backup-request"]
    err = capsys.readouterr().err
    assert "waiting up to 300s for a backup" in err
    assert "prepare_db: pre-upgrade backup 20261127T120000Z taken; to roll back, restore it" in err
    assert err.index("pre-upgrade backup 20261127T120000Z") < err.index("upgrading the tracking schema")
    assert _scalar(database, "SELECT version_num FROM alembic_version") == _head()


def _at_once(main: Callable[[], None], servers: int) -> list[BaseException | None]:
    """Runs prepare_db's main in `servers` threads started together, as a cluster starts the
    replicas of a new service; each one's exception, or None."""
    outcomes: list[BaseException | None] = [None] * servers
    start = threading.Barrier(servers)

    def server(index: int) -> None:
        start.wait()
        try:
            main()
        except BaseException as error:  # SystemExit included: what the entrypoint would exit with
            outcomes[index] = error

    threads = [threading.Thread(target=server, args=(index,)) for index in range(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_servers_starting_at_once_take_turns_one_backup_one_migration(
    database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _make_older_schema(database)
    # Every server's environment (run_main would start one server at once).
    for key, value in {
        "MLFLOW_BACKEND_STORE_URI": database,
        "MLFLOW_PRE_UPGRADE_BACKUP": "true",
        "MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT": "20",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)
    # The backup answers a second after it was asked, so the second server surely finds the first at work.
    with _backup_container(database, "20261206T040000Z", delay=1.0) as seen:
        outcomes = _at_once(prepare_db.main, 2)
    assert outcomes == [None, None]
    err = capsys.readouterr().err.splitlines()
    assert seen == ["mlflow-backup-request"]
    assert err.count("prepare_db: another server is preparing the database; waiting for it") == 1, err
    assert err.count("prepare_db: pre-upgrade backup 20261206T040000Z taken; to roll back, restore it") == 1, err
    assert err.count("prepare_db: upgrading the tracking schema") == 2, err  # the second one a no-op
    assert _scalar(database, "SELECT version_num FROM alembic_version") == _head()
    assert _scalar(database, "SELECT name FROM experiments WHERE experiment_id = 7") == "kept"


def test_servers_starting_at_once_on_a_fresh_database_create_it_and_the_admin_once(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_auth_database(database)
    admin_password = tmp_path / "admin-password"
    admin_password.write_text("first-Admin-pw1\n", encoding="utf-8")
    for key, value in {
        "MLFLOW_BACKEND_STORE_URI": database,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic-auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(admin_password),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    outcomes = _at_once(prepare_db.main, 3)
    assert outcomes == [None, None, None]
    err = capsys.readouterr().err.splitlines()
    assert err.count("prepare_db: created admin user 'admin'") == 1, err
    assert err.count("prepare_db: another server is preparing the database; waiting for it") >= 1, err
    assert _scalar(database, "SELECT version_num FROM alembic_version") == _head()
    assert _scalar(database, "SELECT count(*) FROM experiments") == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("failed", "prepare_db: the pre-upgrade backup failed (see the backup container's log)"),
        (
            "refused: at most one requested backup every 600s; next in 42s",
            "prepare_db: the backup container refused: at most one requested backup every 600s; next in 42s; "
            "the schema was not upgraded",
        ),
        (
            None,
            "prepare_db: no pre-upgrade backup within 2s: is the backup container running? "
            "The schema was not upgraded.",
        ),
    ],
)
def test_no_upgrade_without_its_backup(
    database: str, run_main: Callable[..., None], answer: str | None, message: str
) -> None:
    older = _make_older_schema(database)
    with _backup_container(database, answer) as seen, pytest.raises(SystemExit, match=f"^{re.escape(message)}$"):
        run_main(database, MLFLOW_PRE_UPGRADE_BACKUP="true", MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT="2")
    assert seen == ["mlflow-backup-request"]
    assert _scalar(database, "SELECT version_num FROM alembic_version") == older


def test_a_current_schema_asks_for_no_backup(
    current_database: str, run_main: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    with _backup_container(current_database, "unexpected") as seen:
        run_main(current_database, MLFLOW_PRE_UPGRADE_BACKUP="true", MLFLOW_PRE_UPGRADE_BACKUP_TIMEOUT="2")
    assert seen == []
    assert "pre-upgrade backup" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("comment", "written_by", "advice"),
    [
        (
            "mlflow-platform: schema written by MLflow 9.1.0",
            "was written by MLflow 9.1.0, which",
            "set mlflowVersion to 9.1.0 or newer (a downgrade needs a backup taken before the upgrade)",
        ),
        (
            None,
            "was written by a newer MLflow release than",
            "set mlflowVersion to the release the stack ran before (a downgrade",
        ),
        (
            "a comment written by hand",
            "was written by a newer MLflow release than",
            "set mlflowVersion to the release the stack ran before (a downgrade",
        ),
    ],
)
def test_a_schema_from_a_newer_release_is_refused_naming_it(
    current_database: str, run_main: Callable[..., None], comment: str | None, written_by: str, advice: str
) -> None:
    import mlflow

    with sqlalchemy.create_engine(current_database).begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'f00df00df00d'"))
        # NULL drops the comment the template's prepare_db recorded.
        quoted = "NULL" if comment is None else f"'{comment}'"
        connection.execute(sqlalchemy.text(f"COMMENT ON TABLE alembic_version IS {quoted}"))
    with pytest.raises(SystemExit) as refused:
        run_main(current_database)
    message = str(refused.value)
    assert message.startswith(
        f"prepare_db: config key 'mlflowVersion' is {mlflow.__version__}, but the tracking database's schema "
        "(revision f00df00df00d) "
    )
    assert written_by in message
    assert advice in message
    assert _scalar(current_database, "SELECT version_num FROM alembic_version") == "f00df00df00d"


def _with_auth_database(uri: str) -> None:
    """What DatabaseBootstrap does before MLflow starts: the role's auth database (prepare_db may not create it)."""
    name = uri.rsplit("/", 1)[1] + "_auth"
    engine = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def test_the_auth_config_reads_back_and_the_declared_admin_password_is_in_force(
    current_database: str, run_main: Callable[..., None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _with_auth_database(current_database)
    config_path = tmp_path / "basic-auth.ini"
    run_main(
        current_database,
        config_path,
        MLFLOW_AUTH_ADMIN_USERNAME="root-admin",
        admin_password="first%Pass word1",
        MLFLOW_AUTH_CACHE_TTL_SECONDS="30",
    )
    assert "prepare_db: created admin user 'root-admin'" in capsys.readouterr().err
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600

    # ConfigParser's interpolation reads the file back: the doubled '%' must come out single.
    parser = configparser.ConfigParser()
    assert parser.read(config_path) == [str(config_path)]
    section = parser["mlflow"]
    assert dict(section) == {
        "default_permission": "READ",
        "database_uri": section["database_uri"],
        "admin_username": "root-admin",
        "admin_password": "first%Pass word1",
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": "30",
    }
    auth_url = make_url(section["database_uri"])
    assert (auth_url.drivername, auth_url.username, auth_url.host, auth_url.database) == (
        "postgresql+psycopg",
        "mlflow",
        "127.0.0.1",
        current_database.rsplit("/", 1)[1] + "_auth",
    )
    assert auth_url.password == "s3cret%pa ss@word:/"
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore

    store = AuthStore()
    store.init_db(section["database_uri"])  # type: ignore[no-untyped-call]  # mlflow ships no types
    try:
        # Created an admin, not promoted later.
        assert store.get_user("root-admin").is_admin
    finally:
        store.engine.dispose()

    # A later start with another declared password (a rotation, kept or restored data) puts it in force.
    run_main(
        current_database,
        config_path,
        MLFLOW_AUTH_ADMIN_USERNAME="root-admin",
        admin_password="second-long-Pass1",
    )
    assert "prepare_db: set the declared password of admin user 'root-admin'" in capsys.readouterr().err
    # The same password again: already in force, nothing to set.
    run_main(
        current_database,
        config_path,
        MLFLOW_AUTH_ADMIN_USERNAME="root-admin",
        admin_password="second-long-Pass1",
    )
    assert "set the declared password" not in capsys.readouterr().err
    store = AuthStore()
    store.init_db(section["database_uri"])  # type: ignore[no-untyped-call]  # mlflow ships no types
    try:
        assert store.authenticate_user("root-admin", "second-long-Pass1")
        assert not store.authenticate_user("root-admin", "first%Pass word1")
        assert store.get_user("root-admin").is_admin
    finally:
        store.engine.dispose()


def test_no_uri_carries_a_password_the_password_file_does(
    postgres: PostgresServer,
    current_database: str,
    run_main: Callable[..., None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the entrypoint runs it: a URI without a password, the role's password from its
    file into libpq's password file (0600, ':' and '\\' escaped), and no secret in the
    environment; the auth config's URI has no password either."""
    _with_auth_database(current_database)
    with_password = make_url(current_database)
    bare_uri = f"{with_password.drivername}://{with_password.username}@{with_password.host}:{with_password.port}/{with_password.database}"
    assert make_url(bare_uri).password is None
    secret_file = tmp_path / "db-password"
    secret_file.write_text(postgres.password + "\n", encoding="utf-8")
    pgpass = tmp_path / "pgpass"
    monkeypatch.setenv("POSTGRES_PASSWORD_FILE", str(secret_file))
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    config_path = tmp_path / "basic-auth.ini"
    run_main(bare_uri, config_path, admin_password="a-long-Pass12")

    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    url = make_url(bare_uri)
    escaped = postgres.password.replace("\\", "\\\\").replace(":", "\\:")
    assert ":" in postgres.password, "the test server's password must exercise the escaping"
    assert pgpass.read_text(encoding="utf-8") == f"{url.host}:{url.port}:*:{url.username}:{escaped}\n"
    parser = configparser.ConfigParser()
    parser.read(config_path)
    assert make_url(parser["mlflow"]["database_uri"]).password is None
    assert parser["mlflow"]["admin_password"] == "a-long-Pass12"
    for value in os.environ.values():
        assert postgres.password not in value
        assert "a-long-Pass12" not in value
    # The server's own store connects the same way: through the password file.
    assert _scalar(bare_uri, "select current_user") == url.username


def test_the_default_permission_and_admin_come_from_the_environment(
    current_database: str, run_main: Callable[..., None], tmp_path: Path
) -> None:
    _with_auth_database(current_database)
    config_path = tmp_path / "basic-auth.ini"
    config_path.write_text("stale content that must be replaced entirely\n" * 10, encoding="utf-8")
    run_main(
        current_database,
        config_path,
        MLFLOW_AUTH_DEFAULT_PERMISSION="NO_PERMISSIONS",
        admin_password="a-long-Pass12",
    )
    parser = configparser.ConfigParser()
    parser.read(config_path)
    assert parser["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert "stale content" not in config_path.read_text(encoding="utf-8")


def test_the_defaults_without_environment(
    current_database: str, run_main: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_auth_database(current_database)
    for key in ("MLFLOW_AUTH_DEFAULT_PERMISSION", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_CACHE_TTL_SECONDS"):
        monkeypatch.delenv(key, raising=False)
    config_path = tmp_path / "basic-auth.ini"
    run_main(current_database, config_path, admin_password="a-long-Pass12")
    parser = configparser.ConfigParser()
    parser.read(config_path)
    section = parser["mlflow"]
    assert (section["default_permission"], section["admin_username"], section["auth_cache_ttl_seconds"]) == (
        "READ",
        "admin",
        "0",
    )


def test_a_wrong_password_fails_fast(
    postgres: PostgresServer, database: str, run_main: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(prepare_db.time, "sleep", sleeps.append)
    wrong = postgres.uri(database.rsplit("/", 1)[1], password="not-the-password")
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        run_main(wrong)
    # No retry: a wrong password does not fix itself.
    assert sleeps == []
    assert time.monotonic() - started < 10


def test_an_unreachable_server_is_retried_then_given_up(
    run_main: Callable[..., None], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(prepare_db.time, "sleep", sleeps.append)
    # Port 1 on loopback: nothing listens, every attempt is refused.
    with pytest.raises(sqlalchemy.exc.OperationalError):
        run_main("postgresql+psycopg://u:p@127.0.0.1:1/db")
    assert sleeps == [2] * 29
    assert capsys.readouterr().err.count("prepare_db: database not ready (OperationalError), retrying") == 29


def test_a_server_that_comes_up_late_is_waited_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(prepare_db.time, "sleep", sleeps.append)
    attempts: list[int] = []

    class LateEngine:
        """Refuses the first two connects, as Postgres does while it restarts."""

        def connect(self) -> contextlib.nullcontext[None]:
            attempts.append(1)
            if len(attempts) <= 2:
                raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))
            return contextlib.nullcontext()

    prepare_db._wait_for_database(LateEngine())
    assert (len(attempts), sleeps) == (3, [2, 2])
    assert capsys.readouterr().err.count("retrying") == 2


def test_a_demoted_admin_is_made_admin_again(
    current_database: str, run_main: Callable[..., None], tmp_path: Path
) -> None:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore

    _with_auth_database(current_database)
    config_path = tmp_path / "basic-auth.ini"
    run_main(current_database, config_path, admin_password="a-long-Pass12")
    store = AuthStore()
    store.init_db(prepare_db._auth_database_uri(current_database))  # type: ignore[no-untyped-call]
    try:
        store.update_user("admin", is_admin=False)
        # Same password: only the flag differs, and the next start restores it.
        run_main(current_database, config_path, admin_password="a-long-Pass12")
        assert store.get_user("admin").is_admin
        assert store.authenticate_user("admin", "a-long-Pass12")
    finally:
        store.engine.dispose()
