# Copyright (c) mmvheat contributors. All rights reserved.
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.registry import HOOKS

from mmvheat.models import switch_to_deploy

__all__ = ['SwitchToDeployHook']


@HOOKS.register_module()
class SwitchToDeployHook(Hook):
    """Specialise the model's mmvheat backbones for inference before a test.

    ``before_test`` runs after the runner has loaded the checkpoint and
    before the first test batch; validation during training does not call
    it. See :func:`mmvheat.models.switch_to_deploy`.
    """
    priority = 'VERY_LOW'

    def before_test(self, runner) -> None:
        deployed = switch_to_deploy(runner.model)
        if deployed:
            MMLogger.get_current_instance().info(
                f'switch_to_deploy(): {", ".join(deployed)}')
