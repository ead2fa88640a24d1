"""Helpers shared by the tests: data, fitted models, servers, bad inputs."""
