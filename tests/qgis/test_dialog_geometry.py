"""The Processing dialogs at their default size show every parameter without a horizontal
scroll bar (issue 31): a long label, choice or check box widens the parameters panel past
the dialog, and the browse buttons at the right end are cut off.

The dialogs are QGIS's own (``processing.gui.AlgorithmDialog``), built on the test session's
offscreen platform (DejaVu Sans 12 pt at 100 dpi on Debian 12). Both are 688 × 523 px
there and in the desktop under Xvfb, where the widgets measured narrower (a choice that
needs 477 px here needed 381 px there): what fits here fits there.
``packaging/dialog_screenshots.py`` checks the real window under Xvfb with the same
functions.
"""
import pytest

from mamol.packaging.dialog_screenshots import (forget_dialog_state, parameters_area,
                                                show_advanced, too_wide)

#: Every MaMOL dialog.
DIALOGS = ("mamol:trainmodel", "mamol:classify", "mamol:evaluate",
           "mamol:createsamplescene", "mamol:installdependencies", "mamol:removeenvironment")


def settle() -> None:
    from qgis.core import QgsApplication
    for _ in range(3):
        QgsApplication.processEvents()


@pytest.fixture
def open_dialog(mamol_provider):
    """Opens an algorithm's dialog as a new user sees it first (shown offscreen): at QGIS's
    default size, the Advanced group collapsed unless asked. Closes it."""
    from qgis.core import QgsApplication
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    opened = []

    def open_(algorithm_id, advanced=False):
        # the session's profile keeps the last dialog's size and the group's state
        forget_dialog_state()
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
        assert algorithm is not None, algorithm_id
        dialog = AlgorithmDialog(algorithm.create())
        opened.append(dialog)
        dialog.show()
        show_advanced(dialog, advanced)
        settle()
        return dialog, parameters_area(dialog, algorithm)

    yield open_
    for dialog in opened:
        dialog.close()
        dialog.deleteLater()


@pytest.mark.parametrize("advanced", [False, True], ids=["basic", "advanced"])
@pytest.mark.parametrize("algorithm_id", DIALOGS)
def test_dialog_has_no_horizontal_scroll_bar_at_its_default_size(open_dialog, algorithm_id,
                                                                  advanced):
    _, area = open_dialog(algorithm_id, advanced)
    assert too_wide(area) == []
    assert area.widget().minimumSizeHint().width() <= area.viewport().width()


def test_the_check_finds_a_widget_that_is_too_wide(open_dialog):
    """The check itself: a label wider than the panel shows the scroll bar and is named."""
    from qgis.PyQt.QtWidgets import QLabel
    _, area = open_dialog("mamol:trainmodel")
    label = QLabel("A label far too long for the panel " * 4)
    area.widget().layout().addWidget(label)
    label.show()
    settle()
    found = [found[:2] for found in too_wide(area)]
    assert ("QLabel", label.text()) in found
    assert ("horizontal scroll bar", "") in found


def test_advanced_parameters_are_shown_when_expanded(open_dialog):
    """The advanced state really shows the advanced parameters (else it checks nothing)."""
    from qgis.PyQt.QtWidgets import QLabel
    _, basic = open_dialog("mamol:trainmodel")
    _, expanded = open_dialog("mamol:trainmodel", advanced=True)

    def shown(area):
        return {label.text() for label in area.widget().findChildren(QLabel)
                if label.isVisible()}
    assert "Learning rate" not in shown(basic)
    assert "Learning rate" in shown(expanded)


def test_first_time_fields_are_few(mamol_provider):
    """A first-time analyst sees the inputs, the backbone, the model kind, the epochs and
    the outputs; the expert settings wait in the Advanced group."""
    from qgis.core import QgsApplication

    from mamol.algorithms.qgis_compat import FLAG_ADVANCED
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("mamol:trainmodel")
    basic = [d.name() for d in algorithm.parameterDefinitions()
             if not d.flags() & FLAG_ADVANCED]
    assert basic == ["HS", "SAR", "LIDAR", "POLYGONS", "CLASS_FIELD", "CLASS_NAME_FIELD",
                     "LABEL_RASTER", "BACKBONE", "WEIGHTS", "PRETRAINED_TAG", "CHECKPOINT",
                     "MODEL_KIND", "EPOCHS", "OUTPUT_MODEL", "OUTPUT_REPORT"]
