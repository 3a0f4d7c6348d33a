# Test-time augmentation for the Mask R-CNN configs (``tools/test.py --tta``):
# three scales, each with and without a horizontal flip, merged by
# mmdet's DetTTAModel (the scales of mmdet's retinanet_tta.py).
# mmdet 3.3's DetTTAModel merges boxes only and refuses models that predict
# masks: this project's tools/test.py --tta swaps in mmvheat.MaskDetTTAModel,
# which also merges the masks (mmdet's own tools/test.py --tta would fail).
tta_model = dict(
    _scope_='mmdet',
    type='DetTTAModel',
    tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))

img_scales = [(1333, 800), (666, 400), (2000, 1200)]
tta_pipeline = [
    dict(_scope_='mmdet', type='LoadImageFromFile', backend_args=None),
    dict(
        _scope_='mmdet',
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=s, keep_ratio=True)
                for s in img_scales
            ],
            [
                dict(type='RandomFlip', prob=1.),
                dict(type='RandomFlip', prob=0.)
            ],
            [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
            [
                dict(
                    type='PackDetInputs',
                    meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                               'scale_factor', 'flip', 'flip_direction'))
            ],
        ])
]
