# Copyright (c) mmvheat contributors. All rights reserved.
"""The model-zoo files: ``configs/{vheat,mpvit}/metafile.yml`` and README.md.

Each metafile parses (model-index format: ``Collections`` and ``Models``);
every ``Config:`` exists; every config with a published result is listed
(the others are named in ``UNPUBLISHED``); each model's numbers equal the
ones in its README table row (the row linking the same config), and every
results row of the README is a model of the metafile; each checkpoint path a
config loads (its ``checkpoint = ...``) is named in the README.
"""
import glob
import os.path as osp
import re

import pytest
import yaml

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FOLDERS = ('vheat', 'mpvit')
# Configs in the folders (outside demo/) that have no published result.
UNPUBLISHED = {
    'vheat': {
        'mask-rcnn_tta.py',  # a fragment used as a _base_
        'mask-rcnn_vheat-t_fpn_ms-crop-3x_coco.py',
        'mask-rcnn_vheat-s_fpn_ms-crop-3x_coco.py',
    },
    'mpvit': set(),
}
TASKS = {
    'Image Classification': ('ImageNet-1k', {'Top 1 Accuracy'}),
    'Object Detection': ('COCO', {'box AP'}),
    'Instance Segmentation': ('COCO', {'mask AP'}),
    'Semantic Segmentation': ('ADE20K', {'mIoU'}),
}
LINK = re.compile(r'\]\(\./([^)]+\.py)\)')


def load_metafile(folder):
    with open(osp.join(ROOT, 'configs', folder, 'metafile.yml')) as f:
        return yaml.safe_load(f)


def readme_rows(folder):
    """{config file name: [cells]} for every table row linking a config."""
    rows = {}
    with open(osp.join(ROOT, 'configs', folder, 'README.md')) as f:
        for line in f:
            match = LINK.search(line)
            if line.startswith('|') and match:
                assert match.group(1) not in rows, (
                    f'{match.group(1)} has two rows in the README')
                cells = [c.strip() for c in line.strip().strip('|').split('|')]
                rows[match.group(1)] = cells
    return rows


def fmt(value):
    return f'{float(value):.1f}'


@pytest.mark.parametrize('folder', FOLDERS)
def test_metafile_format(folder):
    meta = load_metafile(folder)
    assert set(meta) == {'Collections', 'Models'}
    names = set()
    for coll in meta['Collections']:
        names.add(coll['Name'])
        assert coll['Paper']['URL'].startswith('https://arxiv.org/abs/')
        assert coll['Paper']['Title']
        assert coll['README'] == f'configs/{folder}/README.md'
        assert osp.isfile(osp.join(ROOT, coll['README']))
        # this project's code, not a published repository
        assert osp.isfile(osp.join(ROOT, coll['Code']['URL']))
    model_names = [m['Name'] for m in meta['Models']]
    assert len(model_names) == len(set(model_names))
    for model in meta['Models']:
        assert model['In Collection'] in names
        assert 'Weights' not in model, 'no download URLs are known'
        assert osp.isfile(osp.join(ROOT, model['Config'])), model['Config']
        assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
        assert model['Results']
        for result in model['Results']:
            dataset, metrics = TASKS[result['Task']]
            assert result['Dataset'] == dataset
            assert set(result['Metrics']) == metrics


@pytest.mark.parametrize('folder', FOLDERS)
def test_every_published_config_listed(folder):
    listed = {
        osp.basename(m['Config'])
        for m in load_metafile(folder)['Models']
    }
    configs = {
        osp.basename(p)
        for p in glob.glob(osp.join(ROOT, 'configs', folder, '*.py'))
    }
    assert UNPUBLISHED[folder] <= configs
    assert listed == configs - UNPUBLISHED[folder]
    with open(osp.join(ROOT, 'configs', folder, 'README.md')) as f:
        readme = f.read()
    for name in UNPUBLISHED[folder]:
        assert name in readme, f'{name} not explained in the README'
    for path in glob.glob(osp.join(ROOT, 'configs', folder, 'demo', '*.py')):
        assert 'demo/' + osp.basename(path) in readme


@pytest.mark.parametrize('folder', FOLDERS)
def test_numbers_match_readme(folder):
    rows = readme_rows(folder)
    models = load_metafile(folder)['Models']
    # every README results row is a metafile model and vice versa
    assert set(rows) == {osp.basename(m['Config']) for m in models}
    for model in models:
        cells = rows[osp.basename(model['Config'])]
        for result in model['Results']:
            for metric, value in result['Metrics'].items():
                assert fmt(value) in cells, (model['Name'], metric, value)
        meta = model['Metadata']
        if 'Parameters' in meta:
            assert f'{meta["Parameters"] / 1e6:g}M' in cells, model['Name']
        if 'FLOPs' in meta:
            assert f'{meta["FLOPs"] / 1e9:g}G' in cells, model['Name']
        for key, value in meta.items():
            if key.startswith('Throughput'):
                assert str(value) in cells, model['Name']


@pytest.mark.parametrize('folder', FOLDERS)
def test_checkpoint_paths_in_readme(folder):
    with open(osp.join(ROOT, 'configs', folder, 'README.md')) as f:
        readme = f.read()
    for path in glob.glob(osp.join(ROOT, 'configs', folder, '*.py')):
        with open(path) as f:
            match = re.search(r"^checkpoint = '([^']+)'", f.read(), re.M)
        if match:
            assert f'`{match.group(1)}`' in readme, (path, match.group(1))
