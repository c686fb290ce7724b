"""The algorithms' parameter names and their order, frozen: saved graphical models (.model3),
scripts and qgis_process command lines name parameters, so a redesign of how parameters are
declared must not rename, drop or reorder one. A new parameter goes into ADDED on purpose."""

FROZEN = {
    'mamol:checkenvironment': ['DEVICE', 'PROBE_SECONDS', 'OUTPUT_JSON'],
    'mamol:classify': [
        'MODEL', 'HS', 'SAR', 'LIDAR', 'REFERENCE', 'PIXEL_SIZE', 'EXTENT', 'MASK', 'DEVICE',
        'PRECISION', 'COMPILE', 'BATCH_SIZE', 'STRIDE', 'BLOCK_SIZE', 'GDAL_CACHE',
        'MAX_MISSING_FRACTION', 'OUTPUT', 'OUTPUT_PROBABILITIES', 'OUTPUT_CONFIDENCE',
        'OUTPUT_ENTROPY', 'OUTPUT_MODALITIES'
    ],
    'mamol:createsamplescene': ['SIZE', 'SEED', 'OUTPUT_FOLDER'],
    'mamol:evaluate': [
        'MODEL', 'HS', 'SAR', 'LIDAR', 'LABEL_RASTER', 'POLYGONS', 'CLASS_FIELD', 'ABSENT',
        'HS_AVAILABILITY', 'SAR_AVAILABILITY', 'LIDAR_AVAILABILITY', 'MAX_SAMPLES_PER_CLASS',
        'MAX_MISSING_FRACTION', 'BATCH_SIZE', 'DEVICE', 'PRECISION', 'SEED', 'OUTPUT_REPORT'
    ],
    'mamol:installdependencies': ['BUILD', 'TORCH_INDEX', 'ENV_FOLDER', 'EXISTING_PYTHON'],
    'mamol:removeenvironment': ['ENV_FOLDER'],   # new since the freeze (issue 31)
    'mamol:trainmodel': [
        'HS', 'SAR', 'LIDAR', 'POLYGONS', 'CLASS_FIELD', 'CLASS_NAME_FIELD', 'BACKBONE', 'WEIGHTS',
        'PRETRAINED_TAG', 'CHECKPOINT', 'BACKBONE_SEED', 'PATCH_SIZE', 'MODEL_KIND', 'EPOCHS',
        'BATCH_SIZE', 'MICRO_BATCH_SIZE', 'LEARNING_RATE', 'WEIGHT_DECAY', 'VALIDATION_FRACTION',
        'MAX_SAMPLES_PER_CLASS', 'MISSING_MODE', 'MISSING_RATE', 'HS_AVAILABILITY',
        'SAR_AVAILABILITY', 'LIDAR_AVAILABILITY', 'SIMULATE_VALIDATION', 'TRAINING_MODE',
        'MCE_FACTORS', 'LAMBDA_AUX', 'LAMBDA_SUB', 'LAMBDA_REC', 'DEVICE', 'PRECISION', 'COMPILE',
        'SEED', 'OUTPUT_MODEL', 'OUTPUT_REPORT'
    ],
}


#: Parameters added since the names were frozen (2026-12-04), each with the reason.
ADDED = {
    # training from a label raster; Toolbox parity (issue 30)
    "mamol:trainmodel": ["LABEL_RASTER", "MAX_VALIDATION_PER_CLASS", "BALANCE_CLASSES",
                         "WARMUP_FRACTION"],
    "mamol:evaluate": ["FORCE_INDEPENDENTLY"],   # Toolbox parity (issue 30)
    "mamol:classify": ["TILE_STEP", "TILE_BLEND", "COG"],   # Toolbox parity (issue 30)
}


def test_parameter_names_and_order_are_unchanged(mamol_provider):
    from qgis.core import QgsApplication
    provider = QgsApplication.processingRegistry().providerById("mamol")
    today = {algorithm.id(): [d.name() for d in algorithm.parameterDefinitions()]
             for algorithm in provider.algorithms()}
    assert set(today) == set(FROZEN)
    for algorithm, names in today.items():
        added = ADDED.get(algorithm, [])
        assert sorted(set(names) - set(FROZEN[algorithm])) == sorted(added), algorithm
        assert [n for n in names if n not in added] == FROZEN[algorithm], algorithm
