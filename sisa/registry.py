"""A tiny name -> factory registry, shared by models, datasets, aggregators and executors."""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, TypeVar

from sisa.errors import SisaError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; an unknown name raises :class:`SisaError` listing the choices.

    >>> colours = Registry("colour")
    >>> @colours.register("red")
    ... def red():
    ...     return "#f00"
    >>> colours.get("red")()
    '#f00'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SisaError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
