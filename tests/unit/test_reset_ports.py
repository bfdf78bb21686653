from pyhv.devices.legacy import reset_ports


def test_port_a_keeps_a20_and_resets_on_bit_0():
    resets: list[int] = []
    port = reset_ports.SystemControlPortA(lambda: resets.append(1))
    assert port.read(0, 1) == reset_ports.PORT_A_A20
    port.write(0, 1, 0x00)
    assert port.read(0, 1) == 0 and not resets
    port.write(0, 1, 0x03)
    assert resets == [1] and port.read(0, 1) == reset_ports.PORT_A_A20

