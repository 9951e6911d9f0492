"""Client-side clipping for client-level DP, switched on by the server's train config.

Flower's `DifferentialPrivacyClientSide*` wrappers need the matching mod on every client. One
ClientApp serves every run, so this mod reads the mode the server put in the train config
(`client-dp`) and hands the message to Flower's fixed or adaptive clipping mod.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

CLIENT_DP_CONFIG_KEY = "client-dp"
CLIPPING_MODS = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}


def client_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    config = msg.content.config_records.get("config")
    mode = str(config.get(CLIENT_DP_CONFIG_KEY, "off")) if config is not None else "off"
    clipping = CLIPPING_MODS.get(mode)
    return clipping(msg, context, call_next) if clipping else call_next(msg, context)
