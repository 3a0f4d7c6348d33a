# Test-time augmentation for the Mask R-CNN configs (``tools/test.py --tta``):
# three scales, each with and without a horizontal flip (the scales of
# mmdet's retinanet_tta.py), merged by mmvheat.MaskDetTTAModel: mmdet's
# DetTTAModel (boxes flipped back, class-wise NMS, the best max_per_img),
# with the masks, which mmdet 3.3's DetTTAModel refuses. Named here, it is
# what mmdet's own tools/test.py --tta uses too.
tta_model = dict(
    _scope_='mmdet',
    type='mmvheat.MaskDetTTAModel',
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
