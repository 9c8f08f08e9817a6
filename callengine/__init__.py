"""The application: the host that wires the runtime, the call and chat trees and the
wire together (``callengine.host``), its admin API, the serving processes, and the
``callengine`` command. It sits on top of every other package and nothing of the
product imports it.
"""
