"""Configuration: defaults, the TOML file, environment overrides, and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from helpers import run_job_service, write_config
from marshmallow import fields

from backends import MongoDBOptions, TinyDBOptions
from job_service import ConfigError, ConfigSchema, load_config, prepare_directories


def write_text(tmp_path: Path, text: str) -> Path:
    """A config file of exactly `text`: for the tests of what a bad file makes the loader say."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_no_config_at_all_means_tinydb_in_data_and_input_on_localhost():
    config = load_config(None, environ={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.server.max_body_bytes == 1024 * 1024
    assert config.storage.backend == "tinydb" and config.storage.selected == TinyDBOptions(path="data")
    assert config.input.dir == Path("input")
    assert config.jobs.bump_enabled is False


def test_the_example_config_loads_and_means_the_defaults():
    example = Path(__file__).parent.parent / "config.example.toml"
    assert load_config(example, environ={}) == load_config(None, environ={})


def test_a_file_sets_keys_and_input_dir_from_the_environment_wins(tmp_path):
    sections = {"server": {"port": 9000}, "jobs": {"bump_enabled": True}, "input": {"dir": "a"}}
    path = write_config(tmp_path / "config.toml", sections)
    config = load_config(path, environ={"INPUT_DIR": "/srv/input"})
    assert config.server.port == 9000 and config.jobs.bump_enabled is True
    assert config.input.dir == Path("/srv/input")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = 'eighty'\n", "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nprot = 80\n", "server.prot"),
        ("[storage]\nbackend = 'sqlite'\n", "storage.backend"),
        ("[jobs]\nbump_enabled = 'yes'\n", "jobs.bump_enabled"),
        ("[surprise]\n", "surprise"),
        ("[server\n", "cannot read config file"),
        ("[[notify]]\nurl = 'http://hooks.example.org/x'\nevents = ['job.done']\n", "notify.0.events.0"),
        ("[[notify]]\nurl = 'hooks.example.org/x'\nevents = ['job.failed']\n", "notify.0.url"),
        ("[[notify]]\nurl = 'http://hooks.example.org'\nevents = ['job.failed']\nformat = 'xml'\n", "notify.0.format"),
        ("[[notify]]\nurl = 'http://hooks.example.org'\nevents = []\n", "notify.0.events"),
        ("[[notify]]\nurl = 'http://hooks.example.org'\nevents = ['job.failed']\nsecret_env = 'UNSET'\n", "UNSET"),
        ("[[notify]]\nurl = 'http://a.example.org'\nevents = ['job.failed']\n" * 2, "notify: Each webhook url"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(write_text(tmp_path, text), environ={})
    assert key in str(error.value) and "\n" not in str(error.value)


def test_a_directory_that_cannot_be_created_names_its_key(tmp_path):
    (tmp_path / "file").write_text("")
    path = write_config(tmp_path / "config.toml", {"input": {"dir": str(tmp_path / "file" / "input")}})
    config = load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"^bad config: input\.dir: cannot create directory"):
        prepare_directories(config)


def test_the_command_prints_one_line_and_exits_1_on_a_bad_config(tmp_path):
    path = write_text(tmp_path, "[server]\nport = 'eighty'\n")
    result = run_job_service(path)
    assert result.returncode == 1
    assert result.stderr == "job-service: bad config: server.port: Not a valid integer.\n"


def mongodb_config(tmp_path: Path, **mongodb: str | int) -> Path:
    """A config file for MongoDB, with `mongodb` as its `[storage.mongodb]` section."""
    return write_config(tmp_path / "config.toml", {"storage": {"backend": "mongodb", "mongodb": mongodb}})


def test_mongodb_url_comes_from_the_environment_and_credentials_never_from_the_file(tmp_path):
    path = mongodb_config(tmp_path, url="mongodb://file:27017")
    config = load_config(
        path, environ={"MONGODB_URL": "mongodb://env:27017", "MONGODB_USER": "job", "MONGODB_PASSWORD": "s3cret"}
    )
    assert config.storage.selected == MongoDBOptions(
        url="mongodb://env:27017",
        database="jobdb",
        timeout_seconds=5.0,
        username="job",
        password="s3cret",
    )
    with pytest.raises(ConfigError, match=r"storage\.mongodb\.password: Unknown field"):
        load_config(mongodb_config(tmp_path, password="x"), environ={})


def test_mongodb_durability_is_majority_unless_configured(tmp_path):
    assert (MongoDBOptions().write_concern, MongoDBOptions().read_concern) == ("majority", "majority")
    config = load_config(mongodb_config(tmp_path, write_concern=1, read_concern="local"), environ={})
    assert (config.storage.mongodb.write_concern, config.storage.mongodb.read_concern) == (1, "local")


@pytest.mark.parametrize(
    ("key", "value"),
    [("write_concern", 0), ("write_concern", "all"), ("write_concern", True), ("read_concern", "snapshot")],
)
def test_a_bad_mongodb_concern_is_one_line_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as error:
        load_config(mongodb_config(tmp_path, **{key: value}), environ={})
    assert f"storage.mongodb.{key}" in str(error.value) and "\n" not in str(error.value)


def test_a_secrets_file_gives_the_credentials(tmp_path):
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"MONGODB_USER": "job", "MONGODB_PASSWORD": "from-file"}')
    config = load_config(mongodb_config(tmp_path), environ={"SECRETS_FILE": str(secrets), "MONGODB_USER": "env"})
    assert (config.storage.mongodb.username, config.storage.mongodb.password) == ("job", "from-file")


def test_a_broken_secrets_file_is_one_line_without_its_content(tmp_path):
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"MONGODB_PASSWORD": "hunter2",')
    with pytest.raises(ConfigError) as error:
        load_config(mongodb_config(tmp_path), environ={"SECRETS_FILE": str(secrets)})
    assert str(error.value).startswith("SECRETS_FILE: cannot read") and "hunter2" not in str(error.value)


def test_a_path_with_quotes_and_backslashes_survives_the_config_file(tmp_path):
    odd = tmp_path / 'it\'s "quoted" \\ here'
    prepare_directories(load_config(write_config(tmp_path / "config.toml", {"input": {"dir": str(odd)}}), environ={}))
    assert odd.is_dir()


def schema_keys(schema: Any, prefix: str = "") -> set[str]:
    """Every key a configuration may hold, dotted: `auth.api_key`, `storage.mongodb.url`."""
    keys = set()
    for name, field in schema().fields.items():
        if isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):  # an array of tables
            field = field.inner
        if isinstance(field, fields.Nested):
            keys |= schema_keys(field.schema.__class__, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def example_keys(text: str) -> set[str]:
    """Every key `config.example.toml` names, set or shown commented out, in its table."""
    keys, table = set(), ""
    for line in text.splitlines():
        # A table, or an array of tables shown commented out (`# [[notify]]`).
        if heading := re.fullmatch(r"\[([a-z_.]+)\]|#\s?\[\[([a-z_.]+)\]\]", line.strip()):
            table = (heading.group(1) or heading.group(2)) + "."
        elif key := re.fullmatch(r"#?\s?([a-z_]+) = .*", line.strip()):
            keys.add(table + key.group(1))
    return keys


def test_the_example_config_names_every_key_there_is():
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    # The old name of api_key is read for old files, never shown to new ones.
    assert example_keys(example) == schema_keys(ConfigSchema) - {"auth.service_token"}
