# Copyright (c) mmvheat contributors. All rights reserved.
"""tools/inference.py: each library's inferencer on a real photograph.

``tests/data/grace_hopper.jpg`` (a public-domain US Navy photograph, see
tests/data/README.md) through a tiny vHeat classifier, Mask R-CNN and
UperNet with random weights saved in mmengine's checkpoint format: the
drawings have the photograph's size, the JSON files the structure and sizes
each library's predictions have. Then folders, the progress lines, and the
one-line errors of bad arguments.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import re
import subprocess
import sys

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import save_checkpoint

from mmvheat.apis.inference import (InferenceError, collect_images, inference,
                                    run_inference)
from mmvheat.utils.checkpoint_loading import (CheckpointMismatchError,
                                              CheckpointRefusedError)
from mmvheat.utils.io import OutputWriteError, ToolError
from .tiny_runs import (SHAPES, cls_config, det_config, seg_config, tool_env,
                        write_file)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'inference.py')
PHOTO = 'grace_hopper.jpg'
PHOTO_SHA256 = \
    'a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130'
PHOTO_SHAPE = (600, 512)  # height, width
CONFIGS = dict(mmpretrain=cls_config, mmdet=det_config, mmseg=seg_config)
CLASSES = dict(
    mmpretrain=SHAPES, mmdet=SHAPES, mmseg=('background', ) + SHAPES)


@pytest.fixture(scope='module')
def photo(reference_dir):
    path = osp.join(reference_dir, PHOTO)
    if not osp.isfile(path):
        pytest.fail(f'{path} is missing (see tests/data/README.md)')
    with open(path, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == PHOTO_SHA256
    return path


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """``models(library)``: (config, checkpoint) of a tiny vHeat model with
    random weights, saved as mmengine's runner saves them."""
    made = {}

    def make(library):
        if library not in made:
            tmp = tmp_path_factory.mktemp(f'{library}_model')
            config = write_file(tmp / f'vheat_{library}.py',
                                CONFIGS[library]('/nonexistent'))
            cfg = Config.fromfile(config)
            from importlib import import_module
            import_module(f'{library}.utils').register_all_modules(
                init_default_scope=False)
            torch.manual_seed(0)
            with DefaultScope.overwrite_default_scope(library):
                from mmengine.registry import MODELS
                model = MODELS.build(cfg.model)
            classes = CLASSES[library]
            palette = [[60 * i, 255 - 60 * i, 128]
                       for i in range(len(classes))]
            checkpoint = str(tmp / 'iter_1.pth')
            meta = dict(dataset_meta=dict(classes=classes, palette=palette))
            save_checkpoint(
                dict(meta=meta, state_dict=model.state_dict()), checkpoint)
            made[library] = (config, checkpoint)
        return made[library]

    return make


def _load_json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize('library', ['mmpretrain', 'mmdet', 'mmseg'])
def test_each_library_on_a_photograph(library, models, photo, tmp_path):
    config, checkpoint = models(library)
    out_dir = str(tmp_path / 'out')
    with DefaultScope.overwrite_default_scope('mmengine'):
        result = run_inference(
            config, checkpoint, [photo], out_dir, device='cpu', progress=False)
        # The inferencers' init_default_scope does not outlive the call.
        assert DefaultScope.get_current_instance().scope_name == 'mmengine'
    assert result['library'] == library
    assert result['images'] == [photo]

    drawn = mmcv.imread(osp.join(out_dir, 'vis', PHOTO))
    assert drawn.shape == PHOTO_SHAPE + (3, )
    assert not np.array_equal(drawn, mmcv.imread(photo))  # something drawn
    assert result['preds'] == [osp.join(out_dir, 'preds', 'grace_hopper.json')]
    pred = _load_json(result['preds'][0])
    height, width = PHOTO_SHAPE
    assert pred['img_path'] == osp.abspath(photo)
    assert (pred['height'], pred['width']) == PHOTO_SHAPE
    classes = list(CLASSES[library])
    assert pred['classes'] == classes

    if library == 'mmpretrain':
        scores = np.array(pred['pred_scores'])
        assert scores.shape == (len(classes), )
        # softmax in float32: a sum off 1 by a few ulp
        assert abs(scores.sum() - 1) < 1e-5
        assert pred['pred_label'] == int(scores.argmax())
        assert pred['pred_score'] == pytest.approx(scores.max(), abs=1e-7)
        assert pred['pred_class'] == classes[pred['pred_label']]
    elif library == 'mmdet':
        from pycocotools import mask as mask_utils
        boxes = np.array(pred['bboxes'])
        assert len(boxes) > 0  # random heads score every class near 1/4
        assert len(pred['labels']) == len(pred['scores']) == len(boxes) == \
            len(pred['masks'])
        assert set(pred['labels']) <= set(range(len(classes)))
        assert all(0 <= s <= 1 for s in pred['scores'])
        # Boxes are clipped to the resized image, then divided by the
        # resize factor (128/600): float32 rounding of 600 and 512 only.
        tol = 1e-3
        assert (boxes[:, 0] >= -tol).all() and (boxes[:, 1] >= -tol).all()
        assert (boxes[:, 2] <= width + tol).all()
        assert (boxes[:, 3] <= height + tol).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all()
        assert (boxes[:, 3] >= boxes[:, 1]).all()
        assert mask_utils.decode(pred['masks'][0]).shape == PHOTO_SHAPE
    else:
        label_map = mmcv.imread(
            osp.join(out_dir, 'preds', pred['label_map']), flag='unchanged')
        assert label_map.shape == PHOTO_SHAPE
        counts = {p['label']: p['count'] for p in pred['pixels']}
        assert sum(counts.values()) == height * width
        labels, pixels = np.unique(label_map, return_counts=True)
        assert counts == dict(zip(labels.tolist(), pixels.tolist()))
        assert set(counts) <= set(range(len(classes)))
        assert all(p['name'] == classes[p['label']] for p in pred['pixels'])


def test_predictions_follow_the_checkpoint(models, photo, tmp_path):
    """The weights in the file are the ones used: other weights, other
    scores; the same file, the same scores."""
    config, checkpoint = models('mmpretrain')
    other = str(tmp_path / 'other.pth')
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    head = [k for k in state['state_dict'] if k.endswith('fc.weight')]
    assert head
    for key in head:
        state['state_dict'][key] = torch.randn_like(state['state_dict'][key])
    torch.save(state, other)

    scores = []
    for i, ckpt in enumerate((checkpoint, checkpoint, other)):
        out = run_inference(
            config,
            ckpt, [photo],
            str(tmp_path / str(i)),
            device='cpu',
            progress=False)
        scores.append(_load_json(out['preds'][0])['pred_scores'])
    assert scores[0] == scores[1]
    assert max(abs(a - b) for a, b in zip(scores[0], scores[2])) > 1e-3


def test_folders_names_and_progress(models, photo, tmp_path):
    """Folders searched recursively, same file names kept apart, one
    progress line per tenth of the images in a log, no bar per batch."""
    inputs = tmp_path / 'inputs'
    (inputs / 'a' / 'deeper').mkdir(parents=True)
    (inputs / 'b').mkdir()
    names = ['a/x.jpg', 'a/deeper/x.jpg', 'b/x.jpg'
             ] + [f'b/{i:02d}.png' for i in range(27)]
    small = mmcv.imrescale(mmcv.imread(photo), 0.25)
    for name in names:
        mmcv.imwrite(small, str(inputs / name))
    (inputs / 'b' / 'notes.txt').write_text('not an image')
    config, checkpoint = models('mmpretrain')
    out_dir = tmp_path / 'out'
    single = str(inputs / 'a' / 'x.jpg')  # also inside the folder
    result = subprocess.run([
        sys.executable, TOOL, config, checkpoint, single,
        str(inputs), '--out-dir',
        str(out_dir), '--device', 'cpu', '--batch-size', '2'
    ],
                            cwd=str(tmp_path),
                            env=tool_env(),
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert '30 images (mmpretrain)' in result.stdout
    steps = [int(n) for n in re.findall(r'inference: (\d+)/30 images', log)]
    # Batches of 2, a line once a tenth more is done, and at the end.
    assert steps == [2, 6, 10, 14, 18, 22, 26, 30], log[-3000:]
    assert 'Inference' not in log  # the inferencers' own bars

    vis = sorted(
        osp.relpath(osp.join(root, f), out_dir / 'vis')
        for root, _, files in os.walk(out_dir / 'vis') for f in files)
    # The file given first keeps its name; the same file in the folder is
    # not read twice.
    assert vis == sorted(['x.jpg', 'a/deeper/x.jpg', 'b/x.jpg'] +
                         [f'b/{i:02d}.png' for i in range(27)])
    for name in vis:
        assert mmcv.imread(str(out_dir / 'vis' / name)).shape == small.shape
        pred = _load_json(out_dir / 'preds' /
                          (osp.splitext(name)[0] + '.json'))
        assert pred['img_path'].startswith(str(inputs))


def test_live_progress_bar_in_a_terminal(models, photo, tmp_path):
    """In a terminal the progress is one live bar, not log lines."""
    import pty
    config, checkpoint = models('mmpretrain')
    inputs = tmp_path / 'inputs'
    inputs.mkdir()
    small = mmcv.imrescale(mmcv.imread(photo), 0.25)
    for i in range(4):
        mmcv.imwrite(small, str(inputs / f'{i}.jpg'))
    master, terminal = pty.openpty()
    proc = subprocess.Popen([
        sys.executable, TOOL, config, checkpoint,
        str(inputs), '--out-dir',
        str(tmp_path / 'out'), '--device', 'cpu'
    ],
                            cwd=str(tmp_path),
                            env=tool_env(COLUMNS='100'),
                            stdin=subprocess.DEVNULL,
                            stdout=terminal,
                            stderr=terminal)
    os.close(terminal)
    shown = b''
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, shown.decode(errors='replace')[-3000:]
    text = shown.decode(errors='replace')
    assert re.search(r'Inference.*4/4|Inference.*100%', text), text[-3000:]
    assert 'inference: ' not in text
    assert '4 images (mmpretrain)' in text


def test_collect_images_names(tmp_path):
    for name in ('x.jpg', 'd/x.jpg', 'd/X.png', 'd/y.txt'):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b'')
    images = collect_images([str(tmp_path / 'x.jpg'), str(tmp_path / 'd')])
    # Stems compare without case: X.json and x.json are one file on some
    # file systems.
    assert [name for _, name in images] == ['x.jpg', 'X-1.png', 'x-2.jpg']
    assert [osp.relpath(p, tmp_path) for p, _ in images] == \
        ['x.jpg', 'd/X.png', 'd/x.jpg']


def test_bad_arguments_fail_in_one_line(models, photo, tmp_path):
    config, checkpoint = models('mmpretrain')
    det_config_path, _ = models('mmdet')
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('no images here')
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'this is not a checkpoint')
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    out = str(tmp_path / 'out')
    cases = {
        'nope.py: no such config file': ['nope.py', checkpoint, photo],
        'nope.pth: no such file': [config, 'nope.pth', photo],
        f'{corrupt}: is not a PyTorch checkpoint':
        [config, str(corrupt), photo],
        f'{checkpoint} does not fit the MaskRCNN: ':
        [det_config_path, checkpoint, photo],
        'no such file or folder: missing.jpg':
        [config, checkpoint, 'missing.jpg'],
        'no image files': [config, checkpoint, str(empty)],
        'is not an image file':
        [config, checkpoint, str(empty / 'readme.txt')],
    }
    for message, argv in cases.items():
        with pytest.raises(ToolError, match=re.escape(message)):
            inference(argv + ['--out-dir', out, '--device', 'cpu'])
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8 not a jpeg')
    for library in ('mmpretrain', 'mmdet'):
        with pytest.raises(
                InferenceError,
                match=re.escape(f'cannot read image {broken}')):
            inference([
                *models(library),
                str(broken), '--out-dir', out, '--device', 'cpu'
            ])
    with pytest.raises(
            OutputWriteError,
            match=re.escape(f'cannot write --out-dir {a_file}/sub: {a_file} '
                            'is not a directory')):
        inference(
            [config, checkpoint, photo, '--out-dir',
             str(a_file / 'sub')])

    # The tool: one line, exit status 1, no out-dir made.
    result = subprocess.run([
        sys.executable, TOOL, config,
        str(corrupt), photo, '--out-dir',
        str(tmp_path / 'never')
    ],
                            cwd=str(tmp_path),
                            env=tool_env(),
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 1
    errors = [
        line for line in result.stderr.splitlines()
        if line.startswith('error:')
    ]
    assert len(errors) == 1
    assert errors[0] == (f'error: {corrupt}: is not a PyTorch checkpoint '
                         '(corrupt, or another kind of file)')
    assert 'Traceback' not in result.stderr
    assert not osp.exists(tmp_path / 'never')


def test_strict_and_trusted_checkpoints(models, photo, tmp_path):
    """A weight the model lacks is refused unless --non-strict; a file
    holding other objects is refused unless --trust-checkpoint, which both
    reads (this module's and the inferencer's) honour."""
    config, checkpoint = models('mmpretrain')
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    extra = str(tmp_path / 'extra.pth')
    torch.save(
        dict(state, state_dict=dict(state['state_dict'], extra=torch.ones(1))),
        extra)
    trusted = str(tmp_path / 'trusted.pth')
    torch.save(dict(state, args=argparse.Namespace(lr=0.1)), trusted)
    out = str(tmp_path / 'out')

    def run(ckpt, *flags):
        return inference(
            [config, ckpt, photo, '--out-dir', out, '--device', 'cpu', *flags])

    with pytest.raises(
            CheckpointMismatchError,
            match=re.escape(f'{extra} does not fit the ImageClassifier: 1 '
                            'unexpected [extra]; load it anyway with '
                            '--non-strict')):
        run(extra)
    assert len(run(extra, '--non-strict')['preds']) == 1
    with pytest.raises(
            CheckpointRefusedError,
            match=re.escape(f'{trusted}: refused global argparse.Namespace')):
        run(trusted)
    assert len(run(trusted, '--trust-checkpoint')['preds']) == 1
