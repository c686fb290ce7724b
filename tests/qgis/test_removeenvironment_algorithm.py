"""``mamol:removeenvironment`` through real QGIS Processing (``processing.run``): it removes
what 'Install dependencies' made, says how much that freed, forgets the setting that
pointed there, and never touches an environment of the user's own."""
import sys
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException

import qgis_session
from qgis_session import recording_feedback
from mamol.algorithms import model_env

ALGORITHM = "mamol:removeenvironment"


def run(parameters, feedback=None):
    import processing
    return processing.run(ALGORITHM, parameters, feedback=feedback)


@pytest.fixture
def kept_setting():
    """The 'mamol/python' setting as it was before the test, restored after it."""
    with qgis_session.kept_setting(model_env.SETTINGS_KEY) as settings:
        yield settings


def _env(folder: Path, made_here: bool = True, payload: int = 250_000_000) -> Path:
    """A venv-shaped folder with ``payload`` bytes of packages (a sparse file: no disk
    used); with the marker 'Install dependencies' writes when ``made_here``."""
    (folder / "bin").mkdir(parents=True)
    (folder / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (folder / "bin" / "python").symlink_to(sys.executable)
    (folder / "lib").mkdir()
    with open(folder / "lib" / "torch.so", "wb") as library:
        library.truncate(payload)
    if made_here:
        (folder / model_env.MARKER_FILE).write_text("{}")
    return folder


def test_registered_in_setup(mamol_provider):
    algorithm = QgsApplication.processingRegistry().algorithmById(ALGORITHM)
    assert algorithm.displayName() == "Remove model environment"
    assert (algorithm.group(), algorithm.groupId()) == ("Setup", "setup")
    assert "never touched" in algorithm.shortHelpString()
    assert algorithm.parameterDefinition("ENV_FOLDER").help()


def test_removes_a_folder_install_made_and_forgets_the_setting(mamol_provider, kept_setting,
                                                                tmp_path):
    env = _env(tmp_path / "python-env")
    kept_setting.setValue(model_env.SETTINGS_KEY, str(env))
    feedback = recording_feedback()
    results = run({"ENV_FOLDER": str(env)}, feedback)
    assert not env.exists()
    assert results["REMOVED"] == str(env)
    assert results["FREED_GB"] == pytest.approx(0.25, abs=0.001)
    assert f"Removed {env}." in feedback.info and "0.25 GB freed." in feedback.info
    assert kept_setting.value(model_env.SETTINGS_KEY, None) is None
    assert Path(sys.executable).is_file()


def test_refuses_an_environment_of_the_users_own(mamol_provider, kept_setting, tmp_path):
    own = _env(tmp_path / "my-env", made_here=False)
    kept_setting.setValue(model_env.SETTINGS_KEY, str(own))
    with pytest.raises(QgsProcessingException, match="was not made by 'Install dependencies'"):
        run({"ENV_FOLDER": str(own)})
    assert (own / "lib" / "torch.so").is_file()
    assert kept_setting.value(model_env.SETTINGS_KEY) == str(own)


def test_without_a_folder_the_profiles_environment_and_the_chosen_one(mamol_provider,
                                                                     kept_setting, tmp_path):
    """No folder given: the default environment in the QGIS profile and, when 'Install
    dependencies' made it, the one the setting names; the user's own is left alone."""
    default = model_env.default_env_dir(QgsApplication.qgisSettingsDirPath())
    if default.exists():
        pytest.skip(f"{default} exists in the test profile; not removing it")
    _env(default)
    chosen = _env(tmp_path / "chosen-env")
    kept_setting.setValue(model_env.SETTINGS_KEY, str(chosen))
    feedback = recording_feedback()
    try:
        results = run({}, feedback)
    finally:
        model_env.remove_environment(default)
    assert results["REMOVED"] == f"{default};{chosen}"
    assert results["FREED_GB"] == pytest.approx(0.5, abs=0.001)
    assert not default.exists() and not chosen.exists()
    assert kept_setting.value(model_env.SETTINGS_KEY, None) is None

    own = _env(tmp_path / "own-env", made_here=False)
    kept_setting.setValue(model_env.SETTINGS_KEY, str(own))
    feedback = recording_feedback()
    results = run({}, feedback)
    assert results == {"REMOVED": "", "FREED_GB": 0}
    assert f"MaMOL is set to use {own}, which 'Install dependencies' did not make: left " \
        "alone." in feedback.info
    assert f"No environment at {default}: nothing to remove." in feedback.info
    assert (own / "lib" / "torch.so").is_file()
    assert kept_setting.value(model_env.SETTINGS_KEY) == str(own)
