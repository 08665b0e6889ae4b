"""The local web playground (`stagegpt play`): watch a model sample and attend."""
