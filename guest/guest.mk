# placeholder: the test guest's rules (being written)
GUEST_ELF := $(BUILD)/guest/godwit-guest.elf
.PHONY: guest
guest:
