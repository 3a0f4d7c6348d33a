# Copyright (c) mmvheat contributors. All rights reserved.
"""The model zoo: ``configs/{vheat,mpvit}/metafile.yml``, their README.md and
the top README's table.

Each metafile parses (model-index format: ``Collections`` and ``Models``);
every ``Config:`` exists; every config with a published result is listed
(the others are named in ``UNPUBLISHED``); each model's numbers are the
published ones (``PUBLISHED``, transcribed from the project's facts) and the
ones in its README table row (the row linking the same config), and every
results row of the README is a model of the metafile; each published
checkpoint is the ``Weights`` of its config, linked in the README with the
command converting it and the command evaluating the converted file; each
checkpoint path a config loads (its ``checkpoint = ...``) is named in the
README.
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
    'vheat': {'mask-rcnn_tta.py'},  # a fragment used as a _base_
    'mpvit': set(),
}
# The published results (docs/vheat.md and docs/mpvit.md, the later numbers
# where the published README changed): config -> metrics.
_VHEAT_ARCHS = ('tiny', 'small', 'base')
# yapf: disable
PUBLISHED = {
    **{
        f'vheat-{arch}_16xb128_in1k.py': {'Top 1 Accuracy': top1}
        for arch, top1 in zip(_VHEAT_ARCHS, (82.2, 83.6, 83.9))
    },
    **{
        f'mask-rcnn_vheat-{arch}_fpn_{schedule}_coco.py': {
            'box AP': box,
            'mask AP': mask
        }
        for arch, schedule, box, mask in (
            ('t', '1x', 45.1, 41.2), ('s', '1x', 46.8, 42.3),
            ('b', '1x', 47.7, 43.0), ('t', 'ms-crop-3x', 47.3, 42.5),
            ('s', 'ms-crop-3x', 48.8, 43.7))
    },
    **{
        f'vheat-{arch}_upernet_8xb2-160k_ade20k-512x512.py': {'mIoU': miou}
        for arch, miou in zip(_VHEAT_ARCHS, (47.0, 49.0, 49.6))
    },
    **{
        f'mpvit-{arch}_8xb128_in1k.py': {'Top 1 Accuracy': top1}
        for arch, top1 in zip(('tiny', 'xsmall', 'small', 'base'),
                              (78.2, 80.9, 83.0, 84.3))
    },
    **{
        f'mask-rcnn_mpvit-{arch}_fpn_{schedule}_coco.py': {
            'box AP': box,
            'mask AP': mask
        }
        for schedule, results in (
            ('1x', (('t', 42.2, 39.0), ('xs', 44.2, 40.4), ('s', 46.4, 42.4),
                    ('b', 48.2, 43.5))),
            ('ms-crop-3x', (('t', 44.8, 41.0), ('xs', 46.6, 42.3),
                            ('s', 48.4, 43.9), ('b', 49.5, 44.5))))
        for arch, box, mask in results
    },
    'mpvit-small_upernet_8xb2-160k_ade20k-512x512.py': {'mIoU': 48.3},
    'mpvit-base_upernet_8xb2-160k_ade20k-512x512.py': {'mIoU': 50.3},
}
# The published vHeat checkpoints: config -> file (docs/vheat.md). The
# small UperNet was not released; MPViT's are not known to the facts.
_RELEASES = 'https://github.com/MzeroMiko/vHeat/releases/download/'
PUBLISHED_WEIGHTS = {
    **{f'vheat-{arch}_16xb128_in1k.py': f'vheatcls/vHeat_{arch}.pth'
       for arch in _VHEAT_ARCHS},
    **{f'mask-rcnn_vheat-{arch[0]}_fpn_1x_coco.py':
       f'vheatdet/vHeat_{arch}_det.pth' for arch in _VHEAT_ARCHS},
    **{f'mask-rcnn_vheat-{arch[0]}_fpn_ms-crop-3x_coco.py':
       f'vheatdet/vHeat_{arch}_det_ms3x.pth' for arch in ('tiny', 'small')},
    **{f'vheat-{arch}_upernet_8xb2-160k_ade20k-512x512.py':
       f'vheatseg/vHeat_{arch}_seg.pth' for arch in ('tiny', 'base')},
}
# yapf: enable
_WELL_FORMED_URL = re.compile(
    r'^https://github\.com/MzeroMiko/vHeat/releases/download/'
    r'(vheatcls|vheatdet|vheatseg)/vHeat_(tiny|small|base)'
    r'(|_det|_det_ms3x|_seg)\.pth$')
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


@pytest.mark.parametrize('folder', FOLDERS)
def test_numbers_are_the_published_ones(folder):
    for model in load_metafile(folder)['Models']:
        metrics = {
            metric: value
            for result in model['Results']
            for metric, value in result['Metrics'].items()
        }
        assert metrics == PUBLISHED[osp.basename(model['Config'])], \
            model['Name']


@pytest.mark.parametrize('folder', FOLDERS)
def test_weights_are_the_published_checkpoints(folder):
    with open(osp.join(ROOT, 'configs', folder, 'README.md')) as f:
        readme = f.read()
    rows = readme_rows(folder)
    for model in load_metafile(folder)['Models']:
        config = osp.basename(model['Config'])
        if config not in PUBLISHED_WEIGHTS:
            assert 'Weights' not in model, model['Name']
            continue
        url = model['Weights']
        assert url == _RELEASES + PUBLISHED_WEIGHTS[config]
        assert _WELL_FORMED_URL.match(url), url
        assert f'[model]({url})' in rows[config]
        # The command converting the download, and the one evaluating the
        # converted file with this config.
        convert = re.search(
            r'^python tools/model_converters/vheat_to_mmvheat\.py '
            rf'{re.escape(osp.basename(url))} (\S+)$', readme, re.M)
        assert convert, f'no conversion command for {url}'
        assert re.search(
            rf'^bash tools/dist_test\.sh configs/{folder}/'
            rf'{re.escape(config)} {re.escape(convert[1])} \d+$', readme,
            re.M), f'no test command for {convert[1]}'


def test_top_readme_lists_the_published_numbers():
    """Each backbone's row of the top README's model zoo."""
    with open(osp.join(ROOT, 'README.md')) as f:
        text = f.read()
    start = text.index('## Model zoo')
    zoo = text[start:text.index('\n## ', start)]
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.strip().strip('|').split('|')]
                      for line in zoo.splitlines() if line.startswith('|'))
    }

    def published(config, *metrics):
        values = PUBLISHED.get(config)
        if values is None:
            return '–'
        return ' / '.join(fmt(values[m]) for m in metrics)

    names = {'t': 'tiny', 's': 'small', 'b': 'base', 'xs': 'xsmall'}
    imagenet = {'vheat': '16xb128_in1k.py', 'mpvit': '8xb128_in1k.py'}
    backbones = [('vHeat', a) for a in ('t', 's', 'b')]
    backbones += [('MPViT', a) for a in ('t', 'xs', 's', 'b')]
    for model, short in backbones:
        folder, arch = model.lower(), names[short]
        row = rows[f'{model}-{short.upper()}']
        assert row[0] == published(f'{folder}-{arch}_{imagenet[folder]}',
                                   'Top 1 Accuracy')
        for cell, schedule in ((row[2], '1x'), (row[3], 'ms-crop-3x')):
            assert cell == published(
                f'mask-rcnn_{folder}-{short}_fpn_{schedule}_coco.py', 'box AP',
                'mask AP')
        assert row[4] == published(
            f'{folder}-{arch}_upernet_8xb2-160k_ade20k-512x512.py', 'mIoU')


def test_pretrained_checkpoints_are_one_command_away():
    """Each vHeat dense config's ``checkpoint`` is what a README command
    makes from the published ImageNet file, enlarged to the backbone's
    ``img_size`` where that is not the pretraining size (224)."""
    from mmengine import Config
    with open(osp.join(ROOT, 'configs', 'vheat', 'README.md')) as f:
        readme = f.read()
    configs = [
        p for p in glob.glob(osp.join(ROOT, 'configs', 'vheat', '*.py'))
        if '_coco' in p or 'upernet' in p
    ]
    assert len(configs) == 8
    for path in configs:
        cfg = Config.fromfile(path)
        arch, img_size = cfg.model.backbone.arch, cfg.model.backbone.img_size
        command = ('python tools/model_converters/vheat_to_mmvheat.py '
                   f'vHeat_{arch}.pth {cfg.checkpoint}')
        if img_size != 224:
            command += f' --tg-size {img_size}'
        assert re.search(rf'^{re.escape(command)}$', readme, re.M), command
