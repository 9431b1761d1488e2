"""Registering trained models: the selection rule and ``medrobust register``."""
