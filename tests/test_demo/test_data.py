# Copyright (c) mmvheat contributors. All rights reserved.
"""The synthetic demo datasets, read back with the real loaders."""
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

from demo.data import (DEMO_CLS_CLASSES, DEMO_CLS_METAINFO, DEMO_DET_CLASSES,
                       DEMO_DET_METAINFO, DEMO_SEG_CLASSES, DEMO_SEG_METAINFO,
                       MARKER_NAME, make_ade20k_like, make_coco_instances,
                       make_demo_data, make_imagenet_like, render_scene)

TINY = dict(num_train=8, num_val=4, image_size=(64, 64))


def _files(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = osp.join(dirpath, f)
            out[osp.relpath(path, root)] = path
    return out


def _hashes(root):
    return {
        rel: hashlib.sha256(open(path, 'rb').read()).hexdigest()
        for rel, path in _files(root).items()
    }


def _infos(ds):
    return [ds.get_data_info(i) for i in range(len(ds))]


def _mtimes(root):
    return {rel: os.stat(p).st_mtime_ns for rel, p in _files(root).items()}


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    results = make_demo_data(
        str(root),
        num_train=TINY['num_train'],
        num_val=TINY['num_val'],
        image_size=TINY['image_size'])
    assert all(not r['skipped'] for r in results.values())
    return str(root)


# ---------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------
def test_coco_pycocotools(demo_root):
    from pycocotools.coco import COCO
    root = osp.join(demo_root, 'coco')
    for split, n in (('train', 8), ('val', 4)):
        coco = COCO(
            osp.join(root, 'annotations', f'instances_{split}2017.json'))
        assert len(coco.getImgIds()) == n
        cats = coco.loadCats(coco.getCatIds())
        assert [c['name'] for c in cats] == list(DEMO_DET_CLASSES)
        assert all(c['supercategory'] for c in cats)
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            img = cv2.imread(osp.join(root, f'{split}2017', info['file_name']))
            assert img.shape == (info['height'], info['width'], 3) == (64, 64,
                                                                       3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= 4
            for ann in anns:
                assert ann['iscrowd'] == 0 and ann['area'] > 0
                poly = np.array(ann['segmentation'][0]).reshape(-1, 2)
                x, y, w, h = ann['bbox']
                assert np.allclose([x, y, x + w, y + h],
                                   [*poly.min(0), *poly.max(0)],
                                   atol=0.02)
                assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 64
                mask = coco.annToMask(ann)
                assert abs(mask.sum() - ann['area']) < 0.2 * ann['area'] + 5


def test_coco_mmdet(demo_root):
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs

    pipeline = [
        LoadImageFromFile(),
        LoadAnnotations(with_bbox=True, with_mask=True, poly2mask=True),
        PackDetInputs()
    ]
    for split in ('train', 'val'):
        ds = CocoDataset(
            data_root=osp.join(demo_root, 'coco'),
            ann_file=f'annotations/instances_{split}2017.json',
            data_prefix=dict(img=f'{split}2017/'),
            metainfo=DEMO_DET_METAINFO,
            filter_cfg=dict(filter_empty_gt=True, min_size=4),
            pipeline=pipeline)
        assert ds.metainfo['classes'] == DEMO_DET_CLASSES
        assert len(ds) == (8 if split == 'train' else 4)
        for i in range(len(ds)):
            sample = ds[i]
            assert tuple(sample['inputs'].shape) == (3, 64, 64)
            gt = sample['data_samples'].gt_instances
            labels = gt.labels.tolist()
            assert labels and set(labels) <= set(range(len(DEMO_DET_CLASSES)))
            masks = gt.masks.to_ndarray()
            assert masks.shape == (len(labels), 64, 64)
            img = sample['inputs'].permute(1, 2, 0).numpy().astype(float)
            for box, mask in zip(gt.bboxes.tensor.numpy(), masks):
                x0, y0, x1, y1 = box
                ys, xs = np.nonzero(mask)
                assert len(xs) > 0
                # the mask lies in the box, whose edges it touches (1 px)
                tight = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert np.allclose(tight, box, atol=1.01), (tight, box)
                inside = mask[int(y0):int(np.ceil(y1)),
                              int(x0):int(np.ceil(x1))].sum()
                assert inside == mask.sum()
                # the shape is drawn where the mask is: its colour stands
                # out from a ring just outside it
                m = mask.astype(np.uint8)
                ring = cv2.dilate(m, np.ones((5, 5), np.uint8)) - m
                inner = cv2.erode(m, np.ones((3, 3), np.uint8))
                contrast = np.linalg.norm(img[inner > 0].mean(0) -
                                          img[ring > 0].mean(0))
                assert contrast > 40, contrast


def test_coco_metric_on_ground_truth(demo_root):
    """mmdet's CocoMetric scores the ground truth as perfect."""
    import torch
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs
    from mmdet.evaluation import CocoMetric

    ann_file = osp.join(demo_root, 'coco', 'annotations',
                        'instances_val2017.json')
    ds = CocoDataset(
        data_root=osp.join(demo_root, 'coco'),
        ann_file=ann_file,
        data_prefix=dict(img='val2017/'),
        metainfo=DEMO_DET_METAINFO,
        test_mode=True,
        pipeline=[
            LoadImageFromFile(),
            LoadAnnotations(with_bbox=True, with_mask=True),
            PackDetInputs()
        ])
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        sample = ds[i]['data_samples']
        gt = sample.gt_instances
        pred = dict(
            bboxes=gt.bboxes.tensor,
            scores=torch.ones(len(gt)),
            labels=gt.labels,
            masks=torch.from_numpy(gt.masks.to_ndarray()).bool())
        metric.process({}, [
            dict(
                img_id=sample.img_id,
                ori_shape=sample.ori_shape,
                pred_instances=pred)
        ])
    results = metric.evaluate(len(ds))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)
    assert results['coco/segm_mAP'] == pytest.approx(1.0)


def test_polygon_matches_drawing():
    """pycocotools' rasterised polygon is the drawn shape (convention)."""
    from pycocotools import mask as mask_utils
    for seed in range(12):
        scene = render_scene(
            np.random.default_rng(seed), (64, 80), 3, with_label_map=True)
        for inst in scene['instances']:
            rle = mask_utils.frPyObjects(
                [inst['polygon'].reshape(-1).tolist()], 64, 80)
            coco_mask = mask_utils.decode(rle)[..., 0].astype(bool)
            # shapes never touch: the drawn instance is the connected
            # region of its class under the polygon
            same = (scene['label_map'] == inst['label'] + 2).astype(np.uint8)
            _, regions = cv2.connectedComponents(same, connectivity=4)
            ids, counts = np.unique(
                regions[coco_mask & (same > 0)], return_counts=True)
            drawn = regions == ids[np.argmax(counts)]
            iou = (coco_mask & drawn).sum() / (coco_mask | drawn).sum()
            assert iou > 0.9, iou


# ---------------------------------------------------------------------------
# ADE20K
# ---------------------------------------------------------------------------
def test_ade20k_mmseg(demo_root):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import ADE20KDataset, BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs

    root = osp.join(demo_root, 'ade')
    for sub in ('training', 'validation'):
        names = sorted(os.listdir(osp.join(root, 'annotations', sub)))
        assert len(names) == (8 if sub == 'training' else 4)
        for name in names:
            stem = osp.splitext(name)[0]
            assert osp.isfile(osp.join(root, 'images', sub, stem + '.jpg'))
            label = cv2.imread(
                osp.join(root, 'annotations', sub, name), cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and label.shape == (64, 64)
            assert set(np.unique(label)) <= set(
                range(1,
                      len(DEMO_SEG_CLASSES) + 1))  # never 0

    pipeline = [LoadImageFromFile(), LoadAnnotations(), PackSegInputs()]
    prefix = dict(
        img_path='images/validation', seg_map_path='annotations/validation')
    ds = BaseSegDataset(
        data_root=root,
        data_prefix=prefix,
        img_suffix='.jpg',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        metainfo=DEMO_SEG_METAINFO,
        pipeline=pipeline)
    assert ds.metainfo['classes'] == DEMO_SEG_CLASSES
    assert len(ds) == 4
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        label = sample['data_samples'].gt_sem_seg.data.numpy()
        assert label.shape == (1, 64, 64)
        values = set(np.unique(label).tolist())
        assert values <= set(range(len(DEMO_SEG_CLASSES)))  # no 255
        assert 0 in values and len(values) >= 2  # background and a shape
        seen |= values

    # the stock ADE20KDataset reads the same labels (with its own names)
    ade = ADE20KDataset(data_root=root, data_prefix=prefix, pipeline=pipeline)
    assert len(ade) == 4
    assert np.array_equal(ade[0]['data_samples'].gt_sem_seg.data.numpy(),
                          ds[0]['data_samples'].gt_sem_seg.data.numpy())


# ---------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------
def test_imagenet_mmpretrain(demo_root):
    from mmcv.transforms import LoadImageFromFile
    from mmpretrain.datasets import CustomDataset, ImageNet
    from mmpretrain.datasets.transforms import PackInputs

    root = osp.join(demo_root, 'imagenet')
    pipeline = [LoadImageFromFile(), PackInputs()]
    for split, n in (('train', 8), ('val', 4)):
        folders = CustomDataset(
            data_root=root, data_prefix=split, pipeline=pipeline)
        assert folders.metainfo['classes'] == DEMO_CLS_CLASSES
        assert len(folders) == n
        # class folders <-> labels
        for info in _infos(folders):
            folder = osp.basename(osp.dirname(info['img_path']))
            assert DEMO_CLS_CLASSES[info['gt_label']] == folder

        imagenet = ImageNet(
            data_root=root,
            split=split,
            metainfo=DEMO_CLS_METAINFO,
            pipeline=pipeline)
        assert imagenet.ann_file.endswith(osp.join('meta', f'{split}.txt'))
        assert imagenet.metainfo['classes'] == DEMO_CLS_CLASSES
        assert sorted(
            (d['img_path'], d['gt_label'])
            for d in _infos(imagenet)) == sorted(
                (d['img_path'], d['gt_label']) for d in _infos(folders))
        sample = imagenet[0]
        assert tuple(sample['inputs'].shape) == (3, 64, 64)
        assert int(
            sample['data_samples'].gt_label) == _infos(imagenet)[0]['gt_label']

        # the same through an ann_file with a plain data_prefix
        listed = CustomDataset(
            data_root=root,
            data_prefix=split,
            ann_file=f'meta/{split}.txt',
            metainfo=dict(classes=osp.join(root, 'meta', 'classes.txt')))
        assert len(listed) == n
        assert tuple(listed.metainfo['classes']) == DEMO_CLS_CLASSES
    # train classes balanced: image i has class i % 3
    labels = [
        d['gt_label'] for d in sorted(
            _infos(CustomDataset(data_root=root, data_prefix='train')),
            key=lambda d: osp.basename(d['img_path']))
    ]
    assert labels == [i % 3 for i in range(8)]


# ---------------------------------------------------------------------------
# Determinism, idempotence, atomicity
# ---------------------------------------------------------------------------
def test_deterministic(demo_root, tmp_path):
    make_demo_data(
        str(tmp_path),
        num_train=TINY['num_train'],
        num_val=TINY['num_val'],
        image_size=TINY['image_size'])
    for sub in ('coco', 'ade', 'imagenet'):
        a = _hashes(osp.join(demo_root, sub))
        b = _hashes(osp.join(str(tmp_path), sub))
        assert a == b and MARKER_NAME in a and len(a) > 10
    # another seed: other pictures
    other = make_coco_instances(
        str(tmp_path / 'seed1'), seed=1, **TINY)['root']
    c = _hashes(other)
    a = _hashes(osp.join(demo_root, 'coco'))
    assert c['train2017/000000000001.jpg'] != a['train2017/000000000001.jpg']
    # a smaller dataset is a prefix of a larger one
    small = make_ade20k_like(
        str(tmp_path / 'small'),
        num_train=3,
        num_val=1,
        image_size=TINY['image_size'])['root']
    s = _hashes(small)
    a = _hashes(osp.join(demo_root, 'ade'))
    for rel in s:
        if rel != MARKER_NAME:
            assert s[rel] == a[rel]


def test_idempotent_and_regenerate(tmp_path):
    root = str(tmp_path / 'cls')
    first = make_imagenet_like(root, **TINY)
    assert not first['skipped']
    before = _mtimes(root)
    again = make_imagenet_like(root, **TINY)
    assert again['skipped'] and again['stats'] == first['stats']
    assert _mtimes(root) == before

    # other parameters: regenerated cleanly, nothing left beside it
    calls = []
    third = make_imagenet_like(
        root,
        num_train=5,
        num_val=2,
        image_size=(64, 64),
        progress=lambda *a: calls.append(a))
    assert not third['skipped']
    assert calls[-1] == (2, 2, 'imagenet val')
    assert sum(
        len(v) for v in (_files(osp.join(root, 'train')),
                         _files(osp.join(root, 'val')))) == 7
    with open(osp.join(root, MARKER_NAME)) as f:
        assert json.load(f)['params']['num_train'] == 5
    assert sorted(os.listdir(tmp_path)) == ['cls']

    # a missing file makes the dataset incomplete: regenerated
    os.remove(osp.join(root, 'val', 'circle', 'val_000001.JPEG'))
    assert not make_imagenet_like(
        root, num_train=5, num_val=2, image_size=(64, 64))['skipped']


def test_interrupted_run_keeps_old_dataset(tmp_path):
    root = str(tmp_path / 'coco')
    make_coco_instances(root, **TINY)
    before = _hashes(root)

    def interrupt(done, total, desc):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_coco_instances(
            root,
            num_train=6,
            num_val=2,
            image_size=(64, 64),
            progress=interrupt)
    assert _hashes(root) == before  # untouched, and still complete
    assert sorted(os.listdir(tmp_path)) == ['coco']
    assert make_coco_instances(root, **TINY)['skipped']

    # a fresh interrupted run leaves nothing that looks like a dataset
    fresh = str(tmp_path / 'fresh')
    with pytest.raises(KeyboardInterrupt):
        make_coco_instances(fresh, progress=interrupt, **TINY)
    assert not osp.exists(fresh)
    assert sorted(os.listdir(tmp_path)) == ['coco']


def test_refuses_foreign_directory(tmp_path):
    root = tmp_path / 'mine'
    root.mkdir()
    (root / 'precious.txt').write_text('keep me')
    with pytest.raises(FileExistsError):
        make_ade20k_like(str(root), **TINY)
    assert (root / 'precious.txt').read_text() == 'keep me'
    assert not make_ade20k_like(str(root), overwrite=True, **TINY)['skipped']
    assert not (root / 'precious.txt').exists()


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def test_cli(project_root, tmp_path):
    tool = osp.join(project_root, 'tools', 'dataset_converters',
                    'make_demo_data.py')
    out = str(tmp_path / 'demo')
    argv = [
        sys.executable, tool, '--out', out, '--tasks', 'det', 'cls',
        '--num-train', '3', '--num-val', '2', '--size', '48', '64', '--seed',
        '3'
    ]
    first, again = (
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        for cmd in (argv, argv + ['--quiet']))
    assert sorted(os.listdir(out)) == ['coco', 'imagenet']
    assert osp.join(out, 'coco') in first and 'written' in first
    img = cv2.imread(osp.join(out, 'coco', 'val2017', '000001000001.jpg'))
    assert img.shape == (48, 64, 3)
    assert 'up to date' in again


# ---------------------------------------------------------------------------
# Class balance
# ---------------------------------------------------------------------------
def test_classes_balanced(tmp_path):
    """Every class has as many shapes as the others, to two, counted from
    the files (COCO categories; connected regions of the label maps)."""
    num = 60
    coco = make_coco_instances(
        str(tmp_path / 'coco'), num_train=num, num_val=0,
        image_size=(64, 64))['root']
    with open(osp.join(coco, 'annotations', 'instances_train2017.json')) as f:
        annotations = json.load(f)['annotations']
    counts = np.bincount([a['category_id'] - 1 for a in annotations],
                         minlength=len(DEMO_DET_CLASSES))
    assert counts.sum() > 2 * num and counts.max() - counts.min() <= 2, counts

    ade = make_ade20k_like(
        str(tmp_path / 'ade'), num_train=num, num_val=0,
        image_size=(64, 64))['root']
    counts = np.zeros(len(DEMO_SEG_CLASSES) - 1, int)
    labels = osp.join(ade, 'annotations', 'training')
    for name in os.listdir(labels):
        label = cv2.imread(osp.join(labels, name), cv2.IMREAD_UNCHANGED)
        for k in range(len(counts)):
            # shapes never touch, so each is a region of its own
            counts[k] += cv2.connectedComponents(
                (label == k + 2).astype(np.uint8))[0] - 1
    assert counts.sum() > 2 * num and counts.max() - counts.min() <= 2, counts


def test_balanced_labels_defer_unplaced_shapes():
    from demo.data import BalancedLabels
    labels = BalancedLabels(np.random.default_rng(0), num_classes=3)
    first = labels.peek(4)
    # each block of three is one of each class
    assert sorted(first[:3]) == [0, 1, 2] and labels.peek(4) == first
    labels.take([first[0], first[2]])  # the second shape found no room
    assert labels.peek(2) == [first[1], first[3]]
    dealt = [first[0], first[2]]
    for _ in range(100):
        batch = labels.peek(3)
        labels.take(batch[:2])
        dealt += batch[:2]
    counts = np.bincount(dealt, minlength=3)
    assert counts.max() - counts.min() <= 2, counts
