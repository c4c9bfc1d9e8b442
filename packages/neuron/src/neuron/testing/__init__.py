"""Test doubles for the services neuron talks to, such as a hub-compatible model server."""
