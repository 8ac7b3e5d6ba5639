"""Model name -> ordered deployments (router), and which deployments are cooling down (health)."""

from gateway.routing.health import DeploymentHealth
from gateway.routing.router import Deployment, Route, Router

__all__ = ["Deployment", "DeploymentHealth", "Route", "Router"]
