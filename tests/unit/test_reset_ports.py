from pyhv.devices.legacy import reset_ports


def test_port_a_keeps_a20_and_resets_on_bit_0():
    resets: list[int] = []
    port = reset_ports.SystemControlPortA(lambda: resets.append(1))
    assert port.read(0, 1) == reset_ports.PORT_A_A20
    port.write(0, 1, 0x00)
    assert port.read(0, 1) == 0 and not resets
    port.write(0, 1, 0x03)
    assert resets == [1] and port.read(0, 1) == reset_ports.PORT_A_A20



def test_0xcf9_resets_on_the_cpu_reset_bit_and_leaves_config_address_alone():
    from pyhv.devices.pci.root import PciRoot

    resets: list[int] = []
    io = PciRoot().config_io
    io.reset = lambda: resets.append(1)
    io.write(0, 4, 0x8000_0010)  # CONFIG_ADDRESS
    io.write(1, 1, 0x02)  # hard-reset flavour only: nothing happens yet
    assert not resets and io.read(1, 1) == 0x02 and io.read(0, 4) == 0x8000_0010
    io.write(1, 1, 0x06)
    assert resets == [1] and io.read(1, 1) == 0x02 and io.read(0, 4) == 0x8000_0010
