"""Workers on many machines (Docker engines from an inventory file), all feeding one hub."""
