"""Configuration: defaults, the TOML file, environment overrides, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from job_service import ConfigError, load_config, prepare_directories


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_no_config_at_all_means_tinydb_in_data_and_input_on_localhost():
    config = load_config(None, environ={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.server.max_body_bytes == 1024 * 1024
    assert config.storage.backend == "tinydb" and config.storage_options == {"path": "data"}
    assert config.input_dir == Path("input")
    assert config.bump_enabled is False


def test_the_example_config_loads_and_means_the_defaults():
    example = Path(__file__).parent.parent / "config.example.toml"
    assert load_config(example, environ={}) == load_config(None, environ={})


def test_a_file_sets_keys_and_input_dir_from_the_environment_wins(tmp_path):
    path = write_config(tmp_path, '[server]\nport = 9000\n[jobs]\nbump_enabled = true\n[input]\ndir = "a"\n')
    config = load_config(path, environ={"INPUT_DIR": "/srv/input"})
    assert config.server.port == 9000 and config.bump_enabled is True
    assert config.input_dir == Path("/srv/input")


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
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, text), environ={})
    assert key in str(error.value) and "\n" not in str(error.value)


def test_a_directory_that_cannot_be_created_names_its_key(tmp_path):
    (tmp_path / "file").write_text("")
    config = load_config(write_config(tmp_path, f'[input]\ndir = "{tmp_path / "file" / "input"}"\n'), environ={})
    with pytest.raises(ConfigError, match=r"^bad config: input\.dir: cannot create directory"):
        prepare_directories(config)


def test_the_command_prints_one_line_and_exits_1_on_a_bad_config(tmp_path):
    path = write_config(tmp_path, "[server]\nport = 'eighty'\n")
    result = subprocess.run(
        [sys.executable, "-m", "job_service", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr == "job-service: bad config: server.port: Not a valid integer.\n"


MONGODB = '[storage]\nbackend = "mongodb"\n'


def test_mongodb_url_comes_from_the_environment_and_credentials_never_from_the_file(tmp_path):
    path = write_config(tmp_path, MONGODB + '[storage.mongodb]\nurl = "mongodb://file:27017"\n')
    config = load_config(
        path, environ={"MONGODB_URL": "mongodb://env:27017", "MONGODB_USER": "job", "MONGODB_PASSWORD": "s3cret"}
    )
    assert config.storage_options == {
        "url": "mongodb://env:27017",
        "database": "jobdb",
        "timeout_seconds": 5.0,
        "username": "job",
        "password": "s3cret",
    }
    with pytest.raises(ConfigError, match=r"storage\.mongodb\.password: Unknown field"):
        load_config(write_config(tmp_path, MONGODB + '[storage.mongodb]\npassword = "x"\n'), environ={})


def test_a_secrets_file_gives_the_credentials(tmp_path):
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"MONGODB_USER": "job", "MONGODB_PASSWORD": "from-file"}')
    config = load_config(write_config(tmp_path, MONGODB), environ={"SECRETS_FILE": str(secrets), "MONGODB_USER": "env"})
    assert (config.storage_options["username"], config.storage_options["password"]) == ("job", "from-file")


def test_a_broken_secrets_file_is_one_line_without_its_content(tmp_path):
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"MONGODB_PASSWORD": "hunter2",')
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, MONGODB), environ={"SECRETS_FILE": str(secrets)})
    assert str(error.value).startswith("SECRETS_FILE: cannot read") and "hunter2" not in str(error.value)
